"""The report page's inline CSS and JavaScript (no network: everything the page needs is in the one file).

The script reads the embedded JSON (`#report-data`), filters the classes by the search box, sorts them, and renders
one page of class cards at a time, so the page stays fast with 50,000 classes. It builds the DOM with
`textContent` only: class names and paths are never parsed as HTML.
"""

CSS = """
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:12px 20px;
 color:#1d1d1f;background:#fafafa}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:24px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:12px}
.notice{background:#fff4d6;border:1px solid #e0b84c;border-radius:4px;padding:6px 10px;margin:6px 0}
.notice b{color:#8a5a00}
table.stages{border-collapse:collapse;font-variant-numeric:tabular-nums}
table.stages th,table.stages td{border:1px solid #ccc;padding:3px 8px;text-align:right}
table.stages th:first-child,table.stages td:first-child{text-align:left}
table.stages th{background:#eee}
img.figure{max-width:100%;height:auto;border:1px solid #ddd;background:#fff}
.controls{display:flex;gap:10px;align-items:center;flex-wrap:wrap;position:sticky;top:0;background:#fafafa;
 padding:8px 0;z-index:1;border-bottom:1px solid #ddd}
.controls input[type=search]{font-size:15px;padding:4px 8px;width:320px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 10px;margin:10px 0}
.card h3{font-size:15px;margin:0 0 4px}
.card .stats{color:#555;font-size:12px;margin-bottom:6px}
.rows{display:flex;gap:18px;flex-wrap:wrap}
.row h4{font-size:12px;margin:2px 0;color:#444;font-weight:600}
.row.suspects h4{color:#b3261e}.row.selected h4{color:#1d6b2c}
.tiles{display:flex;gap:6px;flex-wrap:wrap}
figure.tile{margin:0;width:84px;font-size:10px;line-height:1.25}
figure.tile figcaption div{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
figure.tile .loss{font-weight:600}
figure.tile img,figure.tile .missing{width:64px;height:64px;object-fit:contain;image-rendering:pixelated;
 background:#eee;border:2px solid #ddd;display:block}
figure.tile.noisy img{border-color:#d8453b}
figure.tile .missing{display:flex;align-items:center;justify-content:center;color:#999;font-size:10px}
figure.tile .pred{color:#666}
.empty{color:#888;font-style:italic;font-size:12px}
.bar{display:inline-block;height:8px;background:#d8453b;vertical-align:middle;margin-left:4px}
footer{color:#888;font-size:12px;margin:24px 0}
"""

JS = r"""
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("report-data").textContent);
  const $ = (id) => document.getElementById(id);
  const search = $("class-search"), sortBy = $("class-sort"), gallery = $("gallery"), info = $("page-info");
  const prev = $("prev-page"), next = $("next-page");
  const lower = D.names.map((n) => n.toLowerCase());
  const cache = {};
  let view = [], page = 0;

  function order(key) {
    if (cache[key]) return cache[key];
    const idx = D.names.map((_, i) => i);
    if (key === "worst") cache[key] = D.worst;
    else if (key === "mean") cache[key] = idx.sort((a, b) => D.mean[b] - D.mean[a] || a - b);
    else if (key === "size") cache[key] = idx.sort((a, b) => D.n[b] - D.n[a] || a - b);
    else if (key === "small") cache[key] = idx.sort((a, b) => D.n[a] - D.n[b] || a - b);
    else cache[key] = idx.sort((a, b) => (lower[a] < lower[b] ? -1 : lower[a] > lower[b] ? 1 : a - b));
    return cache[key];
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function tile(s) {
    // s = [id, path (after D.prefix), loss, predicted class, thumbnail index or -1, wrong label 1/0/-1]
    const f = el("figure", "tile" + (s[5] === 1 ? " noisy" : ""));
    f.title = D.prefix + s[1] + "\nloss " + s[2] + " · predicted: " + D.names[s[3]] +
      (s[5] === 1 ? "\nlabel known to be wrong" : "");
    if (s[4] >= 0) {
      const img = el("img");
      img.alt = "id " + s[0];
      img.width = 64; img.height = 64;
      img.src = "data:image/jpeg;base64," + D.thumbs[s[4]];
      f.appendChild(img);
    } else {
      f.appendChild(el("div", "missing", "image missing"));
    }
    const cap = el("figcaption");
    cap.appendChild(el("div", "", "id " + s[0]));
    cap.appendChild(el("div", "loss", "loss " + s[2].toFixed(3)));
    // names and paths keep their tail (SKU-10023-MUG vs SKU-10023-CUP differ at the end); hover shows them whole
    const pred = el("div", "pred", "→ " + tail(D.names[s[3]], 10));
    pred.title = "predicted: " + D.names[s[3]];
    cap.appendChild(pred);
    if (s[1] !== String(s[0])) cap.appendChild(el("div", "path", tail(s[1], 14)));
    f.appendChild(cap);
    return f;
  }

  function tail(text, n) {
    return text.length > n ? "…" + text.slice(-(n - 1)) : text;
  }

  function row(kind, title, samples) {
    const r = el("div", "row " + kind);
    r.appendChild(el("h4", "", title));
    const t = el("div", "tiles");
    if (samples.length) samples.forEach((s) => t.appendChild(tile(s)));
    else t.appendChild(el("span", "empty", "none"));
    r.appendChild(t);
    return r;
  }

  function card(c) {
    const k = el("div", "card");
    k.dataset.cls = D.names[c];
    k.appendChild(el("h3", "", D.names[c]));
    let stats = D.n[c] + " samples · selected " + D.sel[c] + " · mean loss " + D.mean[c].toFixed(3) +
      " · high-loss share " + (100 * D.high[c]).toFixed(1) + "% · predicted as another class " +
      (100 * D.other[c]).toFixed(1) + "%";
    if (D.noisy) stats += " · labels known wrong " + (100 * D.noisy[c]).toFixed(1) + "%";
    const st = el("div", "stats", stats);
    const bar = el("span", "bar"); bar.style.width = Math.round(80 * D.high[c]) + "px";
    st.appendChild(bar);
    k.appendChild(st);
    const d = D.detail[c];
    if (!d) {
      k.appendChild(el("div", "empty", "no thumbnails for this class (the report shows samples of the " +
        D.detailClasses + " worst classes; raise --max-classes to see more)"));
      return k;
    }
    const rows = el("div", "rows");
    rows.appendChild(row("suspects", "highest loss, not selected: suspected wrong labels", d[0]));
    rows.appendChild(row("selected", "selected for fine-tuning: lowest loss", d[1]));
    k.appendChild(rows);
    return k;
  }

  function render() {
    const pages = Math.max(1, Math.ceil(view.length / D.pageSize));
    page = Math.min(Math.max(page, 0), pages - 1);
    const start = page * D.pageSize, part = view.slice(start, start + D.pageSize);
    const frag = document.createDocumentFragment();
    part.forEach((c) => frag.appendChild(card(c)));
    gallery.replaceChildren(frag);
    if (!view.length) gallery.appendChild(el("p", "empty", "no class matches"));
    info.textContent = view.length ? "classes " + (start + 1) + "–" + (start + part.length) + " of " +
      view.length + " (page " + (page + 1) + "/" + pages + ", " + D.names.length + " classes in all)"
      : "0 of " + D.names.length + " classes";
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  }

  function refresh() {
    const q = search.value.trim().toLowerCase();
    const base = order(sortBy.value);
    view = q ? base.filter((c) => lower[c].includes(q)) : base;
    page = 0;
    render();
  }

  search.addEventListener("input", refresh);
  sortBy.addEventListener("change", refresh);
  prev.addEventListener("click", () => { page -= 1; render(); window.scrollTo(0, gallery.offsetTop - 60); });
  next.addEventListener("click", () => { page += 1; render(); window.scrollTo(0, gallery.offsetTop - 60); });
  refresh();
})();
"""
