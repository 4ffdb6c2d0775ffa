"""dgcf_install_model_from_zip model.zip [--overwrite]: install a shared model under DGCF_results."""
from __future__ import annotations

from dgcf_auto.cli import CommandParser, finish_parser
from dgcf_auto.cli.entry import cli_entry


def build_parser() -> CommandParser:
    p = CommandParser(
        prog="dgcf_install_model_from_zip",
        description="Check a model zip written by dgcf_export_model_to_zip (paths, links, SHA-256 manifest, "
                    "weights-only loading) and install it under $DGCF_results atomically.")
    p.add_argument("zip", help="model zip")
    p.add_argument("--overwrite", action="store_true", help="replace an installed model of the same name")
    finish_parser(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dgcf_auto.inference.model_zip import install_model

    target = install_model(args.zip, overwrite=args.overwrite)
    print(f"dgcf_install_model_from_zip: installed {target}")
    return 0


if __name__ == "__main__":
    main()
