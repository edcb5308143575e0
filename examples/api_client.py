"""Call a running Nucleus Space from Python with gradio_client.

    python app.py &                                   # or a Space: "NucleusOrg/nucleus-playground"
    python examples/api_client.py http://127.0.0.1:7860 --preset recipe --seed 7

Endpoints: /presets (list), /models (list), /generate (prompt + every sampling setting).
"""
from __future__ import annotations

import argparse
import json

from gradio_client import Client


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", nargs="?", default="http://127.0.0.1:7860", help="URL or Space id")
    p.add_argument("--preset", default="recipe")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--max-new-tokens", type=int, default=60)
    args = p.parse_args(argv)

    client = Client(args.src, verbose=False)
    presets = {p["name"]: p for p in client.predict(api_name="/presets")}
    print("presets:", ", ".join(presets))
    preset = presets[args.preset]
    settings = {**preset["settings"], "seed": args.seed, "max_new_tokens": args.max_new_tokens}
    result = client.predict(preset["prompt"], **settings, api_name="/generate")
    print(preset["prompt"] + result["text"])
    print(json.dumps({k: v for k, v in result.items() if k != "text"}))
    return result


if __name__ == "__main__":
    main()
