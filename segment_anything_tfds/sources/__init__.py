"""Where tars come from: manual_dir, the links file, HTTP, downloads, checksums, mirrors."""
