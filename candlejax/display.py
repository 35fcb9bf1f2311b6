"""Print options for Tensor display, as Candle's ``candle::display``.

>>> import candlejax as cj
>>> cj.display.set_print_options_short()   # precision 2, threshold 1000, edge items 2
>>> cj.display.set_print_options_default()
"""

from candlejax.tensor.convert import (
    PrinterOptions,
    print_options,
    set_print_options,
    set_print_options_default,
    set_print_options_full,
    set_print_options_short,
)

__all__ = [
    "PrinterOptions",
    "print_options",
    "set_print_options",
    "set_print_options_default",
    "set_print_options_full",
    "set_print_options_short",
]
