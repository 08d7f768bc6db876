"""Datasets: label spaces, real-layout adapters, the synthetic street-scene generator, tree checks,
Cityscapes preparation and membership manifests. Import the submodules directly (`benchmark.data.splits`)."""
