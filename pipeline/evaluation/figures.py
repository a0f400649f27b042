"""Publication figures: classification maps, confusion matrices, curves and split overlays.

Figures are rendered with matplotlib's Agg canvas on standalone ``Figure`` objects (no pyplot
state, no global backend switch) and written atomically as PNG.

Label maps use the ground-truth convention: 0 = unlabelled/background, 1..C = classes, so
``palette[k]`` is the colour of class k and ``palette[0]`` the background. Maps are drawn with
nearest-neighbour sampling at an integer zoom of the scene, so every scene pixel is a crisp
block and class colours are never blended.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.image as mpimg
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Bbox

from pipeline.data.registry import default_palette, default_rgb_bands
from pipeline.io import atomic_path

MAP_DPI = 150
PLOT_DPI = 180
BACKGROUND = (0.0, 0.0, 0.0)
CORRECT_COLOUR = (0.62, 0.76, 0.62)
ERROR_COLOUR = (0.86, 0.08, 0.08)
SPLIT_ALPHA = 0.7
SPLIT_COLOURS = {
    "train": (0.0, 0.447, 0.698),
    "val": (0.902, 0.624, 0.0),
    "test": (0.0, 0.620, 0.451),
    "guard": (0.941, 0.894, 0.259),
}
_SPLIT_ALIASES = {"training": "train", "validation": "val", "valid": "val", "testing": "test"}
_EXTRA_SPLIT_COLOURS = [(0.800, 0.475, 0.655), (0.337, 0.706, 0.914), (0.835, 0.369, 0.0)]

_PAD_PX = 12
_TITLE_PT = 11
_PANEL_TITLE_PT = 9
_LEGEND_PT = 8


def class_palette(n_classes: int, colours: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """``(n_classes + 1, 3)`` float palette: row 0 background (black), row k class k.

    ``colours`` are the dataset's class colours (0..255, from the registry via the manifest and
    ``meta.json``); without them the registry's default palette for ``n_classes`` is used. Class
    k keeps its colour for any class count, so maps from different runs compare side by side.
    """
    n_classes = int(n_classes)
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if colours is None:
        colours = default_palette(n_classes)
    if len(colours) < n_classes:
        raise ValueError(f"{len(colours)} class colours given for {n_classes} classes")
    rgb = np.asarray(colours[:n_classes], dtype=np.float64).reshape(n_classes, 3) / 255.0
    return np.vstack([np.asarray(BACKGROUND), rgb])


def false_colour(cube, bands: Sequence[int] | None = None) -> np.ndarray:
    """``(H, W, 3)`` float RGB in [0, 1] from three bands of an ``(H, W, B)`` cube.

    ``bands`` default to :func:`pipeline.data.registry.default_rgb_bands` (pass the dataset's
    ``rgb_bands`` from the manifest for a catalogue scene). Each channel gets its own 2-98 percentile stretch so outliers do not
    wash out the scene; non-finite values become 0.
    """
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise ValueError(f"cube must be (H, W, B), got shape {cube.shape}")
    n_bands = cube.shape[2]
    bands = default_rgb_bands(n_bands) if bands is None else tuple(int(b) for b in bands)
    if len(bands) != 3:
        raise ValueError(f"false_colour needs exactly 3 bands, got {len(bands)}")
    for b in bands:
        if not 0 <= b < n_bands:
            raise ValueError(f"band {b} out of range for a cube with {n_bands} bands")
    out = np.zeros(cube.shape[:2] + (3,), dtype=np.float64)
    for i, b in enumerate(bands):
        channel = cube[..., b].astype(np.float64)
        finite = np.isfinite(channel)
        if not finite.any():
            continue
        lo, hi = np.percentile(channel[finite], [2, 98])
        if hi > lo:
            stretched = (channel - lo) / (hi - lo)
            out[..., i] = np.where(finite, np.clip(stretched, 0.0, 1.0), 0.0)
    return out


def _as_label_map(label_map) -> np.ndarray:
    arr = np.asarray(label_map)
    if arr.ndim != 2:
        raise ValueError(f"label map must be 2-D (H, W), got shape {arr.shape}")
    integral = np.issubdtype(arr.dtype, np.integer) or (
        np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.mod(arr, 1) == 0))
    )
    if not integral:
        raise ValueError(f"label map must hold integer labels, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _as_palette(palette) -> np.ndarray:
    raw = np.asarray(palette)
    if raw.ndim != 2 or raw.shape[1] != 3 or raw.shape[0] < 1:
        raise ValueError(f"palette must be (K, 3), got shape {raw.shape}")
    if np.issubdtype(raw.dtype, np.integer):
        return raw.astype(np.float64) / 255.0
    pal = raw.astype(np.float64)
    if not np.all((pal >= 0.0) & (pal <= 1.0)):
        raise ValueError("a float palette must hold RGB values in [0, 1]")
    return pal


def _apply_mask(labels: np.ndarray, mask) -> np.ndarray:
    if mask is None:
        return labels
    mask = np.asarray(mask)
    if mask.shape != labels.shape or mask.dtype != bool:
        raise ValueError(f"mask must be a boolean array of shape {labels.shape}")
    return np.where(mask, 0, labels)


def label_to_rgb(label_map, palette) -> np.ndarray:
    """``(H, W, 3)`` float RGB of a label map (0 = background) coloured with ``palette``."""
    labels = _as_label_map(label_map)
    pal = _as_palette(palette)
    if labels.size and (labels.min() < 0 or labels.max() >= len(pal)):
        raise ValueError(
            f"label map holds labels in [{labels.min()}, {labels.max()}] "
            f"but the palette has colours for 0..{len(pal) - 1}"
        )
    return pal[labels]


def error_map(gt, pred) -> np.ndarray:
    """``(H, W, 3)`` RGB: labelled pixels muted green where ``pred == gt``, red where wrong.

    Unlabelled pixels (``gt == 0``) are background, whatever was predicted there.
    """
    gt = _as_label_map(gt)
    pred = _as_label_map(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt has shape {gt.shape} but pred has {pred.shape}")
    out = np.empty(gt.shape + (3,), dtype=np.float64)
    out[:] = BACKGROUND
    labelled = gt > 0
    out[labelled & (pred == gt)] = CORRECT_COLOUR
    out[labelled & (pred != gt)] = ERROR_COLOUR
    return out


def _as_rgb_image(image, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"{name} must be an (H, W, 3) RGB image, got shape {arr.shape}")
    arr = arr[..., :3]
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float64) / 255.0
    return np.clip(np.nan_to_num(arr.astype(np.float64)), 0.0, 1.0)


def _scene_scale(h: int, w: int, target: int, limit: int) -> float:
    """Zoom for drawing an h x w scene: an integer up to ``target`` px, or 1/m above ``limit``."""
    side = max(h, w)
    if side <= target:
        return float(min(max(1, target // side), 32))
    if side <= limit:
        return 1.0
    return 1.0 / math.ceil(side / limit)


def _legend_handles(entries: Sequence[tuple[str, Sequence[float]]], alpha: float = 1.0):
    return [
        Patch(facecolor=colour, edgecolor="0.3", linewidth=0.5, alpha=alpha, label=name)
        for name, colour in entries
    ]


def _class_legend(class_names: Sequence[str], palette: np.ndarray) -> list:
    if len(palette) < len(class_names) + 1:
        raise ValueError(
            f"palette has {len(palette)} colours, need {len(class_names) + 1} "
            f"(background + {len(class_names)} classes)"
        )
    return [(str(name), palette[k + 1]) for k, name in enumerate(class_names)]


def _image_grid_figure(
    images: Sequence[tuple[str | None, np.ndarray]],
    ncols: int,
    title: str | None,
    legend: list,
    *,
    target: int,
    limit: int,
) -> Figure:
    """Figure with images on a pixel-exact grid and a legend to their right."""
    n = len(images)
    nrows = math.ceil(n / ncols)
    max_h = max(img.shape[0] for _, img in images)
    max_w = max(img.shape[1] for _, img in images)
    scale = _scene_scale(max_h, max_w, target, limit)
    sizes = [
        (max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale)))
        for _, img in images
    ]
    cell_h = max(h for h, _ in sizes)
    cell_w = max(w for _, w in sizes)
    title_h = round(_PANEL_TITLE_PT * MAP_DPI / 72 * 1.7) if any(t for t, _ in images) else 0
    sup_h = round(_TITLE_PT * MAP_DPI / 72 * 1.8) if title else 0
    fig_w = 2 * _PAD_PX + ncols * cell_w + (ncols - 1) * _PAD_PX
    fig_h = 2 * _PAD_PX + sup_h + nrows * (title_h + cell_h) + (nrows - 1) * _PAD_PX

    fig = Figure(figsize=(fig_w / MAP_DPI, fig_h / MAP_DPI), dpi=MAP_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    for i, ((panel_title, img), (h, w)) in enumerate(zip(images, sizes, strict=True)):
        row, col = divmod(i, ncols)
        x0 = _PAD_PX + col * (cell_w + _PAD_PX) + (cell_w - w) // 2
        top = _PAD_PX + sup_h + row * (title_h + cell_h + _PAD_PX) + title_h
        y0 = fig_h - top - h
        ax = fig.add_axes((x0 / fig_w, y0 / fig_h, w / fig_w, h / fig_h))
        ax.imshow(img, interpolation="nearest", aspect="auto", resample=False)
        ax.set_axis_off()
        if panel_title:
            ax.set_title(panel_title, fontsize=_PANEL_TITLE_PT, pad=4)
    if title:
        fig.text(
            0.5,
            1 - (_PAD_PX + sup_h / 2) / fig_h,
            title,
            ha="center",
            va="center",
            fontsize=_TITLE_PT,
        )
    if legend:
        map_top = fig_h - _PAD_PX - sup_h - title_h
        row_px = _LEGEND_PT * MAP_DPI / 72 * 1.9
        rows_fit = max(1, int((fig_h - 2 * _PAD_PX - sup_h) // row_px))
        fig.legend(
            handles=legend,
            loc="upper left",
            bbox_to_anchor=((fig_w - _PAD_PX / 2) / fig_w, map_top / fig_h),
            frameon=False,
            fontsize=_LEGEND_PT,
            ncols=math.ceil(len(legend) / rows_fit),
            borderaxespad=0.0,
            handlelength=1.4,
            handleheight=1.1,
        )
    return fig


def _save_figure(fig: Figure, path, *, dpi: int) -> None:
    """Save as PNG, grown to fit artists outside the figure and snapped to whole pixels."""
    renderer = fig.canvas.get_renderer()
    tight = fig.get_tightbbox(renderer)
    box = Bbox.union([tight, fig.bbox_inches])
    pad = _PAD_PX / dpi
    box = Bbox.from_extents(
        math.floor((box.x0 - (pad if box.x0 < 0 else 0)) * dpi) / dpi,
        math.floor((box.y0 - (pad if box.y0 < 0 else 0)) * dpi) / dpi,
        math.ceil((box.x1 + (pad if box.x1 > fig.bbox_inches.x1 else 0)) * dpi) / dpi,
        math.ceil((box.y1 + (pad if box.y1 > fig.bbox_inches.y1 else 0)) * dpi) / dpi,
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches=box, facecolor="white")


def save_label_png(path, label_map, palette, *, mask=None) -> None:
    """Write the label map as an RGB PNG of exactly H x W pixels (one pixel per scene pixel).

    ``mask`` (bool, True = drawn as background) hides pixels, e.g. the unlabelled ones.
    """
    labels = _apply_mask(_as_label_map(label_map), mask)
    rgb = np.round(label_to_rgb(labels, palette) * 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        mpimg.imsave(tmp, rgb, format="png")


def save_map(
    path,
    label_map,
    class_names: Sequence[str],
    *,
    title: str | None = None,
    mask=None,
    palette=None,
) -> None:
    """Classification or ground-truth map as PNG with a legend of class names beside it.

    The map is drawn at an integer zoom of the scene's H x W (very large scenes are
    subsampled). ``mask`` (bool, True = drawn as background) hides pixels, e.g. to show a
    prediction only on labelled pixels.
    """
    class_names = [str(c) for c in class_names]
    pal = class_palette(len(class_names)) if palette is None else _as_palette(palette)
    legend = _class_legend(class_names, pal)
    rgb = label_to_rgb(_apply_mask(_as_label_map(label_map), mask), pal)
    fig = _image_grid_figure(
        [(None, rgb)], 1, title, _legend_handles(legend), target=600, limit=2400
    )
    _save_figure(fig, path, dpi=MAP_DPI)


def _default_ncols(n: int, h: int, w: int) -> int:
    """Columns that make the grid about twice as wide as tall with few empty cells."""
    best, best_cost = 1, math.inf
    for cols in range(1, n + 1):
        rows = math.ceil(n / cols)
        aspect = (cols * w) / (rows * h)
        cost = abs(math.log(aspect / 2.0)) + (cols * rows - n) / n
        if cost < best_cost - 1e-9:
            best, best_cost = cols, cost
    return best


def save_map_panel(
    path,
    panels: Sequence[tuple[str, np.ndarray]],
    class_names: Sequence[str],
    palette,
    ncols: int | None = None,
    title: str | None = None,
    *,
    extra_legend: Mapping[str, Sequence[float]] | None = None,
) -> None:
    """Several RGB maps of a scene side by side, each titled, with one shared class legend.

    Typical panels: false colour, ground truth, full-scene prediction, prediction on labelled
    pixels, error map. ``extra_legend`` adds entries such as
    ``{"correct": CORRECT_COLOUR, "error": ERROR_COLOUR}`` after the classes.
    """
    if not panels:
        raise ValueError("save_map_panel needs at least one panel")
    images = [(str(name), _as_rgb_image(img, f"panel {name!r}")) for name, img in panels]
    pal = _as_palette(palette)
    legend = _class_legend([str(c) for c in class_names], pal)
    if extra_legend:
        legend += [(str(k), v) for k, v in extra_legend.items()]
    if ncols is None:
        h = max(img.shape[0] for _, img in images)
        w = max(img.shape[1] for _, img in images)
        ncols = _default_ncols(len(images), h, w)
    ncols = max(1, min(int(ncols), len(images)))
    fig = _image_grid_figure(images, ncols, title, _legend_handles(legend), target=400, limit=1500)
    _save_figure(fig, path, dpi=MAP_DPI)


def save_split_png(
    path, rgb, split_masks: Mapping[str, np.ndarray], title: str | None = None
) -> None:
    """Train/val/test/guard pixels overlaid semi-transparently on a false-colour image.

    Colours are fixed per split name (train blue, val orange, test green, guard yellow) so
    figures of different splits compare directly; the legend gives each split's pixel count.
    Masks are drawn in the given order, later ones on top.
    """
    base = _as_rgb_image(rgb, "rgb")
    out = base.copy()
    legend = []
    extra = iter(_EXTRA_SPLIT_COLOURS + list(matplotlib.colormaps["tab10"].colors))
    for name, mask in split_masks.items():
        mask = np.asarray(mask)
        if mask.shape != base.shape[:2] or mask.dtype != bool:
            raise ValueError(
                f"split mask {name!r} must be a boolean array of shape {base.shape[:2]}"
            )
        key = _SPLIT_ALIASES.get(str(name).lower(), str(name).lower())
        colour = np.asarray(SPLIT_COLOURS[key] if key in SPLIT_COLOURS else next(extra))
        out[mask] = (1 - SPLIT_ALPHA) * base[mask] + SPLIT_ALPHA * colour
        legend.append((f"{name} ({int(mask.sum()):,} px)", colour))
    fig = _image_grid_figure(
        [(None, out)], 1, title, _legend_handles(legend, alpha=SPLIT_ALPHA), target=600, limit=2400
    )
    _save_figure(fig, path, dpi=MAP_DPI)


def save_confusion_png(path, cm, class_names: Sequence[str], title: str | None = None) -> None:
    """Confusion matrix as two heat maps: pixel counts and row-normalised percentages.

    Rows are true classes, columns predictions; every cell is annotated (zeros in grey).
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    n = cm.shape[0]
    names = [str(c) for c in class_names]
    if len(names) != n:
        raise ValueError(f"{len(names)} class names given for a {n}x{n} confusion matrix")
    counts = cm.astype(np.int64)
    support = counts.sum(axis=1, keepdims=True)
    percent = np.zeros(counts.shape, dtype=np.float64)
    np.divide(counts * 100.0, support, out=percent, where=support > 0)

    cell_in = 0.45 if n <= 10 else 0.32 if n <= 20 else 0.24
    side = max(2.6, n * cell_in)
    label_in = min(2.0, 0.06 * max(len(s) for s in names) + 0.4)
    fig = Figure(
        figsize=(2 * (side + label_in + 0.9), side + label_in + (0.8 if title else 0.5)),
        dpi=PLOT_DPI,
        layout="constrained",
        facecolor="white",
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    cell_pt = 7 if n <= 10 else 5.5 if n <= 20 else 4
    tick_pt = 8 if n <= 20 else 6
    pct_fmt = "{:.1f}" if n <= 20 else "{:.0f}"
    panels = (
        (axes[0], counts, max(1.0, float(counts.max())), "Counts", "pixels", lambda v: f"{int(v)}"),
        (axes[1], percent, 100.0, "Row-normalised (%)", "% of true class", pct_fmt.format),
    )
    for ax, data, vmax, panel_title, bar_label, fmt in panels:
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_xticks(range(n), names, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(n), names)
        ax.tick_params(labelsize=tick_pt, length=2)
        ax.set_xlabel("Predicted class", fontsize=9)
        ax.set_ylabel("True class", fontsize=9)
        ax.set_title(panel_title, fontsize=10)
        for (i, j), value in np.ndenumerate(data):
            colour = "0.65" if value == 0 else "white" if value > 0.55 * vmax else "black"
            ax.text(j, i, fmt(value), ha="center", va="center", fontsize=cell_pt, color=colour)
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        bar.set_label(bar_label, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=_TITLE_PT)
    with atomic_path(path) as tmp:
        fig.savefig(
            tmp, format="png", dpi=PLOT_DPI, facecolor="white", bbox_inches="tight", pad_inches=0.1
        )


def save_curve_png(
    path,
    x,
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str | None = None,
) -> None:
    """Line plot of one or more series against ``x`` (training curves, OA versus noise).

    Non-finite values are skipped and the remaining points joined, e.g. for a validation
    pass run only every few epochs.
    """
    if not series:
        raise ValueError("save_curve_png needs at least one series")
    x = np.asarray(x, dtype=np.float64)
    fig = Figure(figsize=(5.5, 3.6), dpi=PLOT_DPI, layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    marker = "o" if len(x) <= 30 else None
    for name, values in series.items():
        y = np.asarray(values, dtype=np.float64)
        if y.shape != x.shape:
            raise ValueError(f"series {name!r} has {y.size} values but x has {x.size}")
        finite = np.isfinite(x) & np.isfinite(y)
        ax.plot(x[finite], y[finite], label=str(name), marker=marker, markersize=3.5, linewidth=1.5)
    if x.size and np.all(np.isfinite(x)) and np.all(x == np.round(x)):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=PLOT_DPI, facecolor="white")


def save_interval_png(
    path,
    rows: Sequence[tuple[str, str, float, float, float]],
    ylabel: str,
    title: str | None = None,
) -> None:
    """Point estimates with their confidence intervals, one column per group (e.g. a model) and
    one marker per member (e.g. a seed): ``rows`` of (group, member, estimate, low, high)."""
    if not rows:
        raise ValueError("save_interval_png needs at least one row")
    groups = list(dict.fromkeys(r[0] for r in rows))
    members = list(dict.fromkeys(r[1] for r in rows))
    width = max(4.5, 1.1 * len(groups) + 1.5)
    fig = Figure(figsize=(width, 3.6), dpi=PLOT_DPI, layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    step = 0.6 / max(len(members), 1)
    for j, member in enumerate(members):
        pts = [(groups.index(g), est, lo, hi) for g, m, est, lo, hi in rows if m == member]
        x = np.array([p[0] for p in pts]) - 0.3 + step * (j + 0.5)
        est = np.array([p[1] for p in pts])
        err = np.array([[e - p[2] for p, e in zip(pts, est, strict=True)],
                        [p[3] - e for p, e in zip(pts, est, strict=True)]])  # fmt: skip
        ax.errorbar(x, est, yerr=err, fmt="o", capsize=3, markersize=4, label=str(member))
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    if len(members) > 1:
        ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=PLOT_DPI, facecolor="white")
