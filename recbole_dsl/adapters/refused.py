"""Models a training-loss swap cannot apply to, with the reason the user is told."""

_NOT_GRADIENT = "it is not trained by gradient descent, so there is no training loss to replace"
_DIFFUSION = "it is a diffusion model trained on a denoising objective, not on ranking scores"

REFUSED = {
    **{m: _NOT_GRADIENT for m in
       ("Pop", "ItemKNN", "AsymKNN", "EASE", "SLIMElastic", "ADMMSLIM", "NCEPLRec", "Random")},
    "DiffRec": _DIFFUSION,
    "LDiffRec": _DIFFUSION,
    "LINE": "its objective is a graph-embedding (edge/context) loss, not a user-item ranking loss",
    "GCMC": "it is trained as rating classification over its decoder's classes, not on ranking scores",
}
