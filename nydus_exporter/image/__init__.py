"""Reading images where they are: :mod:`.repository` (the ``ImageRepository`` protocol, the OCI
layout implementation and two wrappers), :mod:`.registry` (a registry repository) and
:mod:`.reader` (the Nydus image reader the pipeline and the tools share)."""
