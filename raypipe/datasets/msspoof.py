"""MSSpoof, Idiap's Multispectral-Spoof database (Chingovska et al., 2015).

Still images of 21 identities in the visible (VIS) and near-infrared (NIR)
spectra, real accesses and printed-photo attacks.

**The layout is NOT verified**: no copy of MSSpoof was available when this
adapter was written. The default is a guess; every part is an option (see
:class:`raypipe.datasets._common.PatternLayout`)::

    glob   ["**/*.png", "**/*.jpg", "**/*.jpeg", "**/*.bmp"]
    regex  (tried in order, case-insensitive, on the path relative to the root)
           (?:^|/)(?P<label>real|attack)/(?P<subject>\\d+)/(?P<spectrum>vis|nir)/[^/]+$
           (?:^|/)(?P<subject>\\d+)/(?P<label>real|attack)/(?P<spectrum>vis|nir)/[^/]+$
           (?:^|/)(?P<label>real|attack)/(?P<spectrum>vis|nir)/(?P<subject>\\d+)/[^/]+$
    default_attack_type  "print"
    split_subjects       None -> everything "train" (give the official client lists here)

Configure it for your copy, for example::

    get_adapter("msspoof", root, regex=r"(?P<subject>\\d{3})_(?P<spectrum>VIS|NIR)_(?P<label>real|spoof)",
                split_subjects={"train": range(1, 8), "dev": range(8, 15), "test": range(15, 22)})

``extras["spectrum"]`` holds VIS/NIR when the regex captures it (NIR images
are single-channel; readers convert them to 3 channels). Files matching the
glob but not the regex go to ``report.skipped``; if none matches, scanning
raises ``DatasetLayoutError`` naming an example file.
"""

from __future__ import annotations

from raypipe.datasets._common import PatternAdapter


class MsspoofAdapter(PatternAdapter):
    name = "msspoof"
    default_options = {
        "glob": ["**/*.png", "**/*.jpg", "**/*.jpeg", "**/*.bmp"],
        "regex": [
            r"(?:^|/)(?P<label>real|attack)/(?P<subject>\d+)/(?P<spectrum>vis|nir)/[^/]+$",
            r"(?:^|/)(?P<subject>\d+)/(?P<label>real|attack)/(?P<spectrum>vis|nir)/[^/]+$",
            r"(?:^|/)(?P<label>real|attack)/(?P<spectrum>vis|nir)/(?P<subject>\d+)/[^/]+$",
        ],
        "label_map": {},
        "attack_type_map": {},
        "default_attack_type": "print",
        "split_map": {},
        "split_subjects": None,
        "hdf5_key": None,
    }
