"""Tools over a finished Nydus image: :mod:`.check` (verify it end to end), :mod:`.inspect`
(describe a blob or a bootstrap), :mod:`.cat` (one file, fetching only its chunks),
:mod:`.unpack` (the merged tree as a tar), :mod:`.mount` (kernel EROFS mount)."""
