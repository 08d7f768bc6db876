"""Where a dataset's files are: a grid dataset's root is a POSIX folder on every node, or a `synthetic://` URI
naming the generator's parameters, which any node turns into the same local folder on first use."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from benchmark.data.synth import SynthSpec, ensure_synthetic_dataset

SYNTHETIC = "synthetic"  # a grid dataset's root for the embedded generator, and that root's URI scheme


def synthetic_root(spec: SynthSpec) -> str:
    """The root of a synthetic dataset as a URI naming its parameters, not a machine's folder: the data is
    deterministic, so each node regenerates the same bytes and nothing has to be shipped or shared."""
    return f"{SYNTHETIC}://{spec.dataset['type']}?{urlencode({'spec': json.dumps(spec.to_json(), sort_keys=True)})}"


def local_data_root(root: str, data_dir: Path) -> Path:
    """A dataset root as a local folder; a synthetic one is written under `data_dir` on first use."""
    parts = urlsplit(root)
    if parts.scheme != SYNTHETIC:
        return Path(root)
    values = json.loads(dict(parse_qsl(parts.query))["spec"])
    spec = SynthSpec.of(values.pop("dataset"), **values)
    digest = hashlib.sha256(json.dumps(spec.to_json(), sort_keys=True).encode()).hexdigest()[:10]
    return ensure_synthetic_dataset(spec, data_dir / f"synthetic-{parts.netloc}-{digest}")
