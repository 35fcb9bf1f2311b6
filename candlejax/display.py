"""Print options for Tensor display, as Candle's ``candle::display``.

>>> import candlejax as cj
>>> cj.display.set_print_options_short()   # precision 2, threshold 1000, edge items 2
>>> cj.display.set_print_options_default()
"""

from candlejax.tensor.convert import (
    PrinterOptions,
    print_options,
    set_edge_items,
    set_line_width,
    set_precision,
    set_print_options,
    set_print_options_default,
    set_print_options_full,
    set_print_options_short,
    set_sci_mode,
    set_threshold,
)

__all__ = [
    "PrinterOptions",
    "print_options",
    "set_edge_items",
    "set_line_width",
    "set_precision",
    "set_print_options",
    "set_print_options_default",
    "set_print_options_full",
    "set_print_options_short",
    "set_sci_mode",
    "set_threshold",
]
