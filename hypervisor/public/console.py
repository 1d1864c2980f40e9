"""The PV console ring page (io/console.h)."""

import struct

XENCONS_IN_SIZE = 1024
XENCONS_OUT_SIZE = 2048
IN_OFFSET = 0
OUT_OFFSET = 1024
INDEX_FORMAT = "<IIII"  # in_cons, in_prod, out_cons, out_prod
IN_CONS, IN_PROD, OUT_CONS, OUT_PROD = 3072, 3076, 3080, 3084
CONNECTION = 3088
assert struct.calcsize(INDEX_FORMAT) == 16
