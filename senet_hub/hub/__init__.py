"""The hub: the weights manifest, downloads, the checksum-verified cache and `evaluate`.

Data flow: manifest.py (what exists, where, its sha256) -> download.py (fetch one URL, Google
Drive confirmation pages) -> integrity.py (hashes, sidecars) -> cache.py (the local store, and
models loaded from it through the format registry) -> evaluate.py / images.py (top-1/top-5 on
real images with each model's own preprocessing). Nothing is imported here, so `import
senet_hub.hub.manifest` stays light.
"""
