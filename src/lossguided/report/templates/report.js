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

  function row(kind, title, samples, none) {
    const r = el("div", "row " + kind);
    r.appendChild(el("h4", "", title));
    const t = el("div", "tiles");
    if (samples.length) samples.forEach((s) => t.appendChild(tile(s)));
    else t.appendChild(el("span", "empty", none || "none"));
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
    // suspects: only samples above the run's drop rule (a per-class threshold for 'auto'), highest loss first
    const limit = D.threshold ? D.threshold[c] : D.rule.loss;
    const rule = limit === null ? "no drop threshold for this class" : "loss > " + limit.toFixed(3) + " (" +
      (D.threshold ? "this class's drop threshold" : D.rule.name) + ")";
    rows.appendChild(row("suspects", "suspected wrong labels: not selected, " + rule, d[0],
      "none: no sample of this class is above " + (limit === null ? "a drop threshold" : "it")));
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
