"""The catalogue of hyperspectral classification benchmarks: one self-describing entry each.

Each :class:`DatasetInfo` records where the files come from (with size and sha256), the licence
and citation, the scene's shape and class names, and the defaults the pipeline uses for it:
class palette, false-colour RGB bands and PCA components. Fetching lives in
:mod:`pipeline.data.fetching`, a user's own scene in :mod:`pipeline.data.custom`.

=================  =====================================================  =====================
name               source (primary)                                       licence
=================  =====================================================  =====================
indian_pines       AVIRIS 1992, Purdue PURR doi:10.4231/R7RX991C; files   CC BY 3.0
                   shipped in the PyPI package tensorly==0.10.0 (offline)
salinas            AVIRIS 1998, GIC UPV/EHU "Hyperspectral Remote         none stated
                   Sensing Scenes"                                        (free for research)
salinas_a          sub-scene of Salinas, GIC UPV/EHU                      none stated
pavia_university   ROSIS-03, courtesy P. Gamba (Univ. of Pavia), EHU      none stated
pavia_centre       ROSIS-03, courtesy P. Gamba (Univ. of Pavia), EHU      none stated
ksc                AVIRIS 1996, UT Austin CSR (Ham et al. 2005), EHU      none stated
botswana           EO-1 Hyperion 2001, UT Austin CSR (Ham et al. 2005)    none stated
custom             a user's own cube and label map (``custom=...``)       the user's
=================  =====================================================  =====================

Sizes and sha256 are those of the original files as distributed by the sources above. A
``sha256`` of ``None`` means no trusted hash is known: the first fetch records the hash in the
manifest (``sha256_recorded_unknown``) and logs a warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.errors import ParamsError

__all__ = [
    "DATASETS",
    "PALETTE_16",
    "DatasetInfo",
    "FileSpec",
    "default_palette",
    "default_rgb_bands",
    "get_dataset",
    "normalise_name",
]

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset and the places it can be obtained from."""

    filename: str
    key: str | None
    sha256: str | None
    size: int | None
    urls: tuple[str, ...] = ()
    package_path: str | None = None
    aliases: tuple[str, ...] = ()  # other names accepted for the file in a local data_dir


@dataclass(frozen=True)
class DatasetInfo:
    """A benchmark scene: its files, shape, class names, defaults, licence and citation."""

    name: str
    title: str
    class_names: tuple[str, ...]
    cube: FileSpec
    gt: FileSpec
    shape: tuple[int, int, int]
    pca_components: int
    rgb_bands: tuple[int, int, int]
    palette: tuple[RGB, ...]  # one 0..255 colour per class, class k at index k-1
    citation: str
    licence: str
    alternatives: tuple[tuple[FileSpec, FileSpec], ...] = ()


_EHU = "www.ehu.eus/ccwintco/uploads"
_EHU_ES = "www.ehu.es/ccwintco/uploads"


def _ehu(path: str, *, es: bool = False) -> tuple[str, ...]:
    """HTTPS first, then the plain-HTTP address every HSI toolbox (e.g. DeepHyperX) uses."""
    return (f"https://{_EHU}/{path}", f"http://{_EHU_ES if es else _EHU}/{path}")


_EHU_NOTE = (
    "Distributed by the Grupo de Inteligencia Computacional (GIC), UPV/EHU, "
    "'Hyperspectral Remote Sensing Scenes', "
    "https://www.ehu.eus/ccwintco/index.php/Hyperspectral_Remote_Sensing_Scenes"
)
_EHU_LICENCE = (
    "No licence stated by the distributor (GIC, UPV/EHU); public benchmark, "
    "free for research use with citation of the source"
)
_HAM_2005 = (
    "J. Ham, Y. Chen, M. M. Crawford, J. Ghosh, 'Investigation of the random forest framework "
    "for classification of hyperspectral data', IEEE Trans. Geosci. Remote Sens. 43(3), "
    "492-501, 2005"
)

_INDIAN_PINES_CLASSES = (
    "Alfalfa",
    "Corn-notill",
    "Corn-mintill",
    "Corn",
    "Grass-pasture",
    "Grass-trees",
    "Grass-pasture-mowed",
    "Hay-windrowed",
    "Oats",
    "Soybean-notill",
    "Soybean-mintill",
    "Soybean-clean",
    "Wheat",
    "Woods",
    "Buildings-Grass-Trees-Drives",
    "Stone-Steel-Towers",
)
_SALINAS_CLASSES = (
    "Brocoli_green_weeds_1",
    "Brocoli_green_weeds_2",
    "Fallow",
    "Fallow_rough_plow",
    "Fallow_smooth",
    "Stubble",
    "Celery",
    "Grapes_untrained",
    "Soil_vinyard_develop",
    "Corn_senesced_green_weeds",
    "Lettuce_romaine_4wk",
    "Lettuce_romaine_5wk",
    "Lettuce_romaine_6wk",
    "Lettuce_romaine_7wk",
    "Vinyard_untrained",
    "Vinyard_vertical_trellis",
)
_PAVIA_U_CLASSES = (
    "Asphalt",
    "Meadows",
    "Gravel",
    "Trees",
    "Painted metal sheets",
    "Bare Soil",
    "Bitumen",
    "Self-Blocking Bricks",
    "Shadows",
)
_PAVIA_C_CLASSES = (
    "Water",
    "Trees",
    "Asphalt",
    "Self-Blocking Bricks",
    "Bitumen",
    "Tiles",
    "Shadows",
    "Meadows",
    "Bare Soil",
)
_KSC_CLASSES = (
    "Scrub",
    "Willow swamp",
    "Cabbage palm hammock",
    "Cabbage palm/oak hammock",
    "Slash pine",
    "Oak/broadleaf hammock",
    "Hardwood swamp",
    "Graminoid marsh",
    "Spartina marsh",
    "Cattail marsh",
    "Salt marsh",
    "Mud flats",
    "Water",
)
_BOTSWANA_CLASSES = (
    "Water",
    "Hippo grass",
    "Floodplain grasses 1",
    "Floodplain grasses 2",
    "Reeds",
    "Riparian",
    "Firescar",
    "Island interior",
    "Acacia woodlands",
    "Acacia shrublands",
    "Acacia grasslands",
    "Short mopane",
    "Mixed mopane",
    "Exposed soils",
)

# Class colours, 0..255 RGB, class k at index k-1 (background is black). The classic Indian
# Pines map of the HSI literature; scenes with fewer classes use its first colours.
PALETTE_16: tuple[RGB, ...] = (
    (255, 254, 137),
    (3, 28, 241),
    (255, 89, 1),
    (5, 255, 133),
    (255, 2, 251),
    (89, 1, 255),
    (3, 171, 255),
    (12, 255, 7),
    (172, 175, 84),
    (160, 78, 158),
    (101, 173, 255),
    (60, 91, 112),
    (104, 192, 63),
    (139, 69, 46),
    (119, 255, 172),
    (254, 255, 3),
)

# Default false-colour bands (red, green, blue) near 650, 550 and 450 nm.
_AVIRIS_RGB = (43, 21, 11)
_ROSIS_RGB = (55, 41, 12)

DATASETS: dict[str, DatasetInfo] = {
    "indian_pines": DatasetInfo(
        name="indian_pines",
        title="Indian Pines (AVIRIS, 200 corrected bands)",
        class_names=_INDIAN_PINES_CLASSES,
        cube=FileSpec(
            filename="Indian_pines_corrected.npy",
            key=None,
            sha256="8f038e4d81569e38ebfc72a15c9984c150de42580ab260be10a13442e912e451",
            size=8410128,
            package_path="tensorly:datasets/data/Indian_pines_corrected.npy",
        ),
        gt=FileSpec(
            filename="Indian_pines_gt.npy",
            key=None,
            sha256="44610d21625b311b05b8e0c4ba9a6cc755c2fbb9df48e4d89419024aa6ad3f9d",
            size=21153,
            package_path="tensorly:datasets/data/Indian_pines_gt.npy",
        ),
        shape=(145, 145, 200),
        pca_components=30,
        rgb_bands=_AVIRIS_RGB,
        palette=PALETTE_16,
        citation=(
            "M. F. Baumgardner, L. L. Biehl, D. A. Landgrebe (2015). 220 Band AVIRIS "
            "Hyperspectral Image Data Set: June 12, 1992 Indian Pine Test Site 3. Purdue "
            "University Research Repository. doi:10.4231/R7RX991C. Corrected 200-band cube and "
            "16-class ground truth as distributed by GIC UPV/EHU; the .npy copies ship in the "
            "PyPI package tensorly 0.10.0 (tensorly/datasets/data/)"
        ),
        licence="CC BY 3.0 (Purdue University Research Repository)",
        alternatives=(
            (
                FileSpec(
                    filename="Indian_pines_corrected.mat",
                    key="indian_pines_corrected",
                    sha256="ec2f8808710919d566f70f0d4aa885aae1ddfd42b734aba71c5e12ca65450939",
                    size=5953527,
                    urls=_ehu("6/67/Indian_pines_corrected.mat"),
                ),
                FileSpec(
                    filename="Indian_pines_gt.mat",
                    key="indian_pines_gt",
                    sha256="65c4687a8ab04f6da4789799bc3bc4f6e88bccac3ed6a2e6ae367e5e6b9e429c",
                    size=1125,
                    urls=_ehu("c/c4/Indian_pines_gt.mat"),
                ),
            ),
        ),
    ),
    "salinas": DatasetInfo(
        name="salinas",
        title="Salinas Valley (AVIRIS, 204 corrected bands)",
        class_names=_SALINAS_CLASSES,
        cube=FileSpec(
            filename="Salinas_corrected.mat",
            key="salinas_corrected",
            sha256="5ec1c0d22f56d18ecd336f8e35735863c0f160682e04e0c18ef3f89a3334d87d",
            size=26552770,
            urls=_ehu("a/a3/Salinas_corrected.mat"),
        ),
        gt=FileSpec(
            filename="Salinas_gt.mat",
            key="salinas_gt",
            sha256="ecfab4d31ef5553f097943235d8ea502038eb4a2067b2ad10b33e37c949955e2",
            size=4277,
            urls=_ehu("f/fa/Salinas_gt.mat"),
        ),
        shape=(512, 217, 204),
        pca_components=15,
        rgb_bands=_AVIRIS_RGB,
        palette=PALETTE_16,
        citation=(
            "AVIRIS scene over Salinas Valley, California, 1998 (3.7 m pixels, 224 bands, 20 "
            "water-absorption bands removed). " + _EHU_NOTE
        ),
        licence=_EHU_LICENCE,
    ),
    "salinas_a": DatasetInfo(
        name="salinas_a",
        title="Salinas-A (AVIRIS sub-scene of Salinas, 204 corrected bands)",
        class_names=_SALINAS_CLASSES,
        cube=FileSpec(
            filename="SalinasA_corrected.mat",
            key="salinasA_corrected",
            sha256="d75684ed3ab71a1024cee0f9db9061f50a3523a92ff5edfbbb1eed976b9f1721",
            size=1539086,
            urls=_ehu("1/1a/SalinasA_corrected.mat"),
        ),
        gt=FileSpec(
            filename="SalinasA_gt.mat",
            key="salinasA_gt",
            sha256="17814c1d3296c0e29b27f320f2c4174d2a68adb87e376abe78f02923e2c2e454",
            size=587,
            urls=_ehu("a/aa/SalinasA_gt.mat"),
        ),
        shape=(83, 86, 204),
        pca_components=15,
        rgb_bands=_AVIRIS_RGB,
        palette=PALETTE_16,
        citation=(
            "Salinas-A: 83x86 sub-scene of the AVIRIS Salinas Valley scene (1998). Labels keep "
            "the Salinas values {1, 10, 11, 12, 13, 14}; class_names is the full Salinas list. "
            + _EHU_NOTE
        ),
        licence=_EHU_LICENCE,
    ),
    "pavia_university": DatasetInfo(
        name="pavia_university",
        title="Pavia University (ROSIS-03, 103 bands)",
        class_names=_PAVIA_U_CLASSES,
        cube=FileSpec(
            filename="PaviaU.mat",
            key="paviaU",
            sha256="28447fa87f7a5797845e9a189c0da85e23b1d06a4ba7361e5ff44efbf834d2fb",
            size=34806917,
            urls=_ehu("e/ee/PaviaU.mat"),
        ),
        gt=FileSpec(
            filename="PaviaU_gt.mat",
            key="paviaU_gt",
            sha256="23f6a426928f9b32984adffe659e29f554f9fb6c93b5a107528d308d5087a829",
            size=11005,
            urls=_ehu("5/50/PaviaU_gt.mat"),
        ),
        shape=(610, 340, 103),
        pca_components=15,
        rgb_bands=_ROSIS_RGB,
        palette=PALETTE_16[:9],
        citation=(
            "ROSIS-03 scene over the University of Pavia, Italy (1.3 m pixels), courtesy of "
            "Prof. Paolo Gamba, Telecommunications and Remote Sensing Laboratory, University of "
            "Pavia. " + _EHU_NOTE
        ),
        licence=_EHU_LICENCE,
    ),
    "pavia_centre": DatasetInfo(
        name="pavia_centre",
        title="Pavia Centre (ROSIS-03, 102 bands)",
        class_names=_PAVIA_C_CLASSES,
        cube=FileSpec(
            filename="Pavia.mat",
            key="pavia",
            sha256="b60341da323fd271cd97dd6d7a69514d385ccd7fdfc5a60c4ff5994b047f152e",
            size=129624657,
            urls=_ehu("e/e3/Pavia.mat"),
        ),
        gt=FileSpec(
            filename="Pavia_gt.mat",
            key="pavia_gt",
            sha256="7eb54ab81b404dd3ae572e6d0ec211595029e5a847bec2cfb8f9e72d07066b69",
            size=34887,
            urls=_ehu("5/53/Pavia_gt.mat"),
            aliases=("paviaC_gt.mat",),
        ),
        shape=(1096, 715, 102),
        pca_components=15,
        rgb_bands=_ROSIS_RGB,
        palette=PALETTE_16[:9],
        citation=(
            "ROSIS-03 scene over the centre of Pavia, Italy (1.3 m pixels), courtesy of "
            "Prof. Paolo Gamba, Telecommunications and Remote Sensing Laboratory, University of "
            "Pavia. " + _EHU_NOTE
        ),
        licence=_EHU_LICENCE,
    ),
    "ksc": DatasetInfo(
        name="ksc",
        title="Kennedy Space Center (AVIRIS, 176 bands)",
        class_names=_KSC_CLASSES,
        cube=FileSpec(
            filename="KSC.mat",
            key="KSC",
            sha256="b1ad011cfdb65c853e4f9f6108ca4774467d87f90a5c23b74ff3a2984a3b4786",
            size=56824624,
            urls=_ehu("2/26/KSC.mat", es=True),
        ),
        gt=FileSpec(
            filename="KSC_gt.mat",
            key="KSC_gt",
            sha256="a1d6ab9293691006bd4d9742d1a1e1c141b1aaa5fbc5fa128b33c1d09038510b",
            size=3240,
            urls=_ehu("a/a6/KSC_gt.mat", es=True),
        ),
        shape=(512, 614, 176),
        pca_components=15,
        rgb_bands=_AVIRIS_RGB,
        palette=PALETTE_16[:13],
        citation=(
            "AVIRIS scene over Kennedy Space Center, Florida, 23 March 1996 (18 m pixels), "
            "Center for Space Research, University of Texas at Austin; "
            + _HAM_2005
            + ". "
            + _EHU_NOTE
        ),
        licence=_EHU_LICENCE,
    ),
    "botswana": DatasetInfo(
        name="botswana",
        title="Botswana, Okavango Delta (EO-1 Hyperion, 145 bands)",
        class_names=_BOTSWANA_CLASSES,
        cube=FileSpec(
            filename="Botswana.mat",
            key="Botswana",
            sha256="f1603903c844cdc2980550b0180688e8e1a72d4292595d1120e1dec2a80a91c7",
            size=78911133,
            urls=_ehu("7/72/Botswana.mat", es=True),
        ),
        gt=FileSpec(
            filename="Botswana_gt.mat",
            key="Botswana_gt",
            sha256="668394905e10e629c16584bfd02b0f533b96d6ba18a63274a94ff3a77126a887",
            size=4039,
            urls=_ehu("5/58/Botswana_gt.mat", es=True),
        ),
        shape=(1476, 256, 145),
        pca_components=15,
        rgb_bands=(75, 33, 15),
        palette=PALETTE_16[:14],
        citation=(
            "NASA EO-1 Hyperion scene over the Okavango Delta, Botswana, 31 May 2001 (30 m "
            "pixels), Center for Space Research, University of Texas at Austin; "
            + _HAM_2005
            + ". "
            + _EHU_NOTE
        ),
        licence=_EHU_LICENCE,
    ),
}


def normalise_name(name: str) -> str:
    """``"Pavia-University"`` -> ``"pavia_university"``."""
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def get_dataset(name: str) -> DatasetInfo:
    """Return the registry entry for ``name``; unknown names raise ParamsError listing them."""
    key = normalise_name(name)
    if key in DATASETS:
        return DATASETS[key]
    if key == "custom":
        raise ParamsError(
            "dataset 'custom' has no registry entry; call fetch_dataset('custom', out_dir, "
            "custom={'cube': ..., 'gt': ...})"
        )
    known = ", ".join([*DATASETS, "custom"])
    raise ParamsError(f"unknown dataset {name!r}; known datasets: {known}")


def default_rgb_bands(bands: int) -> tuple[int, int, int]:
    """False-colour bands for a scene without a catalogue entry: 3/4, 1/2 and 1/4 of the range.

    The longest wavelength goes to red, as in the catalogue entries.
    """
    last = int(bands) - 1
    return round(0.75 * last), round(0.5 * last), round(0.25 * last)


_MIN_COLOUR_DISTANCE = 0.2


def default_palette(n_classes: int) -> tuple[RGB, ...]:
    """``n_classes`` distinct 0..255 colours: :data:`PALETTE_16`, then tab20/b/c, then hues.

    A candidate is kept only if it is far enough (RGB distance on 0..1) from black and from
    every colour already chosen, so class k has the same colour for every class count.
    """
    from matplotlib import colormaps, colors  # only scenes with more than 16 classes need it

    n = int(n_classes)
    if n <= len(PALETTE_16):
        return PALETTE_16[: max(n, 0)]
    chosen = [(0.0, 0.0, 0.0)] + [tuple(c / 255 for c in rgb) for rgb in PALETTE_16]
    out = list(PALETTE_16)

    def take(rgb01, threshold: float) -> bool:
        u8 = tuple(int(round(255 * c)) for c in rgb01)
        rgb01 = tuple(c / 255 for c in u8)
        if min(math.dist(rgb01, c) for c in chosen) <= threshold:
            return False
        chosen.append(rgb01)
        out.append(u8)
        return True

    for name in ("tab20", "tab20b", "tab20c"):
        for rgb in colormaps[name].colors:
            if len(out) >= n:
                return tuple(out)
            take(tuple(rgb), _MIN_COLOUR_DISTANCE)
    golden = (math.sqrt(5) - 1) / 2
    threshold = _MIN_COLOUR_DISTANCE
    i = 0
    while len(out) < n:
        hue = (i * golden) % 1.0
        sat = (0.95, 0.6, 0.8)[i % 3]
        val = (0.95, 0.7, 0.5, 0.85)[(i // 3) % 4]
        i += 1
        if not take(tuple(colors.hsv_to_rgb((hue, sat, val))), threshold) and i % 200 == 0:
            threshold *= 0.8
    return tuple(out)
