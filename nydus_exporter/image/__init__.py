"""Reading images where they are: the ``ImageStore`` protocol, its OCI layout
(:mod:`.reader`) and registry (:mod:`.registry`) implementations, and the Nydus image reader
(:mod:`.reader`) that the pipeline and the tools share."""
