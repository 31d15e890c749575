"""Sources and sinks: URIs -> filesystems, input listing, byte reads, image decoding, bundled samples."""
