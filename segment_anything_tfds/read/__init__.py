"""From records to training inputs: RLE decoding, masks, SAM inputs (tf.data and numpy), copy-paste."""
