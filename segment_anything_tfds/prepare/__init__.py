"""From tars to records: members, the record format, the rules both engines share, the local and Beam engines."""
