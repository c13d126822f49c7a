"""mini-internvl-adapt: adapt Mini-InternVL vision-language models to new domains."""

import os as _os

__version__ = "0.1.0"

if _os.environ.get("MINI_INTERNVL_ADAPT_MAX_IMAGE_PIXELS"):  # Pillow's image size limit, set once for all
    import warnings as _warnings

    from mini_internvl_adapt.data_format.limits import apply_pixel_limit as _apply_pixel_limit
    from mini_internvl_adapt.errors import InputError as _InputError

    try:
        _apply_pixel_limit()
    except _InputError as _error:  # the command line reports it as its error; a library caller is warned
        _warnings.warn(str(_error), stacklevel=2)
