"""CSMAD, Idiap's Custom Silicone Mask Attack Dataset (Bhattacharjee et al., BTAS 2018).

**The layout is NOT verified**: no copy of CSMAD was available when this adapter
was written. The default is a guess; every part is an option (see
:class:`raypipe.datasets._common.PatternLayout`)::

    glob   ["**/*.h5", "**/*.hdf5"]
    regex  (?:^|/)(?P<label>bonafide|bona_fide|real|attack)/(?:(?P<support>stand|wear)/)?
           (?:[^/]+/)*(?P<subject>[A-Za-z]*\\d+)[^/]*$
           i.e. bonafide/<...>/<subject>..., attack/{STAND,WEAR}/<...>/<subject>...
    default_attack_type  "silicone_mask"
    split_subjects       None -> everything "train" (CSMAD ships no split we know of)
    hdf5_key             None -> the frame reader uses the first colour frame array

Configure it for your copy, for example::

    get_adapter("csmad", root, glob="**/*.avi",
                regex=r"(?P<label>real|fake)/(?P<subject>\\d+)_",
                label_map={"fake": 1},
                split_subjects={"train": [1, 2, 3], "dev": [4], "test": [5, 6]})

Files matching the glob but not the regex go to ``report.skipped``; if none
matches, scanning raises ``DatasetLayoutError`` naming an example file. Named
groups other than subject/label/attack_type/split (``support`` above) go to
``extras``.
"""

from __future__ import annotations

from raypipe.datasets._common import PatternAdapter


class CsmadAdapter(PatternAdapter):
    name = "csmad"
    default_options = {
        "glob": ["**/*.h5", "**/*.hdf5"],
        "regex": r"(?:^|/)(?P<label>bonafide|bona_fide|real|attack)/(?:(?P<support>stand|wear)/)?"
                 r"(?:[^/]+/)*(?P<subject>[A-Za-z]*\d+)[^/]*$",
        "label_map": {},
        "attack_type_map": {},
        "default_attack_type": "silicone_mask",
        "split_map": {},
        "split_subjects": None,
        "hdf5_key": None,
    }
