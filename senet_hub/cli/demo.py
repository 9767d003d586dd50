"""``senet-hub demo``: the whole flow on a built-in default, by invoking convert and verify."""

from __future__ import annotations

import os

import click

from .app import main, say, size, write_text
from .convert import convert
from .verify import verify


@main.command()
@click.option("-o", "--outdir", default="demo_out", show_default=True, help="Where the demo writes its files.")
@click.option("--arch", default="SE-ResNet-50", show_default=True, help="Released Caffe architecture to use.")
def demo(outdir: str, arch: str) -> None:
    """The whole flow on a built-in default: bundled prototxt + synthetic weights -> PyTorch -> verify."""
    from importlib import resources

    from .. import zoo
    from ..converters import caffe_writer

    os.makedirs(outdir, exist_ok=True)
    prototxt = os.path.join(outdir, f"{arch}.prototxt")
    caffemodel = os.path.join(outdir, f"{arch}.synthetic.caffemodel")
    with resources.as_file(resources.files("senet_hub.zoo_data") / f"{arch}.prototxt") as src, open(src) as f:
        write_text(prototxt, f.read())
    say("=" * 78)
    say(f"senet-hub demo: {arch} from the bundled Caffe deploy prototxt")
    say("NOTE: the released SENet weights are NOT bundled (no download here); this demo uses")
    say("      deterministic synthetic weights (seed 0) written as a real .caffemodel.")
    say("=" * 78)
    caffe_writer.write_caffemodel_for(zoo.synthetic_model(arch, seed=0), caffemodel)
    say(f"[1/3] wrote {caffemodel} ({size(caffemodel)})")
    ctx = click.get_current_context()
    files = {"source": "caffe", "prototxt": prototxt, "caffemodel": caffemodel}
    for suffix in (".pth", ".pt2"):
        # --verify: the written file itself, loaded the way its users load it, against the source
        say(f"[2/3] senet-hub convert --from caffe --to pytorch -o {arch}{suffix} --verify")
        ctx.invoke(convert, target="pytorch", output=os.path.join(outdir, arch + suffix), verify_file=True, **files)
    say("[3/3] senet-hub verify --backends numpy,torch,opencv")
    ctx.invoke(verify, json_path=os.path.join(outdir, "verify.json"), save_dir=os.path.join(outdir, "outputs"), **files)
