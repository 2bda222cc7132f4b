"""EDA figures readable at 4 and at 50,000 classes: class names under the bars when few, whole-number ranks when
many; image sizes in whole pixels (one bar per size when there are few)."""

import numpy as np

from lossguided.report import figures

SKUS = ["SKU-10023-MUG", "SKU-10023-CUP", "SKU-20417-PLATE", "SKU-20417-A-VERY-LONG-BOWL-NAME"]


def labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels()]


def test_few_classes_are_named_under_their_bars():
    fig = figures.class_frequency_figure(
        np.array([50, 30, 20, 5]), head_classes=1, head_share=0.48, tail_classes=1, tail_share=0.05, names=SKUS
    )
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [1, 2, 3, 4]
    shown = labels(ax.xaxis)
    assert shown[:3] == SKUS[:3] and shown[3].startswith("…") and SKUS[3].endswith(shown[3][1:])
    assert figures.class_frequency(
        np.array([50, 30, 20, 5]), head_classes=1, head_share=0.48, tail_classes=1, tail_share=0.05, names=SKUS
    ).startswith(b"\x89PNG")


def test_many_classes_get_whole_number_ranks():
    counts = np.sort(np.random.default_rng(0).integers(1, 200, 50_000))[::-1]
    fig = figures.class_frequency_figure(
        counts,
        head_classes=100,
        head_share=0.1,
        tail_classes=100,
        tail_share=0.01,
        names=[f"c{i}" for i in range(50_000)],
    )
    ax = fig.axes[0]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    ticks = [t for t in ax.get_xticks() if 0.5 <= t <= 50_000.5]
    assert 2 <= len(ticks) <= 10 and all(float(t).is_integer() for t in ticks)
    assert all("," in s or len(s) <= 3 for s in labels(ax.xaxis) if s)  # 10,000 not 10000.0 or 1e4
    fig4 = figures.class_frequency_figure(
        np.array([4, 3, 2, 1]), head_classes=1, head_share=0.4, tail_classes=1, tail_share=0.1
    )
    FigureCanvasAgg(fig4).draw()
    assert all(float(t).is_integer() for t in fig4.axes[0].get_xticks())  # no 1.5, 2.5 ranks without names


def test_images_all_one_size_show_that_size_only():
    fig = figures.image_sizes_figure(np.full(10, 32), np.full(10, 32))
    assert labels(fig.axes[0].xaxis) == ["32"] and labels(fig.axes[1].xaxis) == ["32"]
    many = np.arange(20, 60)
    fig = figures.image_sizes_figure(many, many)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())
