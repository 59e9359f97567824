"""From tars to records: the tar walker, the record format, the rules and
plan both engines share, the local and Beam engines."""
