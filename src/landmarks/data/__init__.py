"""Reading catalogs, sampling, splitting, decoding, caching and augmenting images."""
