"""dgcf_dicom_node --orthanc URL [--user U --password_file F] [-d 1 | -m MODEL_FOLDER] [-f 0 1 ...]: follow
Orthanc's changes and send back an sCT series for every stable MR (or CBCT) series that arrives
(documentation/dicom_node.md); --status prints the queue, the failures and the throughput."""
from __future__ import annotations

from pathlib import Path

from dgcf_auto.cli import CommandParser, finish_parser
from dgcf_auto.cli.entry import cli_entry
from dgcf_auto.devices import DEVICE_HELP, device_argument
from dgcf_auto.paths import DEFAULT_PLANS, DEFAULT_TRAINER


def build_parser() -> CommandParser:
    p = CommandParser(prog="dgcf_dicom_node", description=__doc__)
    p.add_argument("--orthanc", default="http://localhost:8042", help="Orthanc's REST address")
    p.add_argument("--user", default=None, help="Orthanc user (one of its RegisteredUsers)")
    p.add_argument("--password_file", type=Path, default=None,
                   help="file whose first line is the user's password (mode 600; never given as a flag)")
    p.add_argument("--state", type=Path, default=Path("dgcf_dicom_node_state"),
                   help="folder of the node's state (node.sqlite: change index, series, tries) and work files")
    p.add_argument("--status", action="store_true", help="print the queue, done and failed series with reasons "
                   "and the throughput from --state, then exit")
    p.add_argument("-d", default=None, help="dataset id or name of the model; optional when exactly one is trained")
    p.add_argument("-m", default=None, metavar="MODEL_FOLDER",
                   help="a trained or installed model folder (<Trainer>__<Plans>__2d holding fold_*)")
    p.add_argument("-f", nargs="+", default=None, help="folds to ensemble (default: as dgcf_predict)")
    p.add_argument("-tr", default=DEFAULT_TRAINER, help="trainer name")
    p.add_argument("-p", default=DEFAULT_PLANS, help="plans identifier")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file in each fold")
    p.add_argument("-device", default=None, type=device_argument, help=DEVICE_HELP)
    p.add_argument("--disable_tta", action="store_true", help="no left-right mirror test-time augmentation")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="as dgcf_predict")
    p.add_argument("--modality", default=None, choices=["MR", "CT", "CBCT"],
                   help="series to take: MR, CT, or CBCT (a CT whose Image Type holds CBCT); default: the "
                        "model's source modality (mr -> MR, cbct -> CBCT)")
    p.add_argument("--series_filter", nargs="+", default=[], metavar="FILTER",
                   help="take only series matching every filter: 'Keyword~regex' (case-insensitive search) or "
                        "'Keyword=value', on the series' tags, e.g. 'SeriesDescription~T2'")
    p.add_argument("--forward", default=None, metavar="MODALITY",
                   help="have Orthanc C-STORE each sCT series to this modality of its DicomModalities (a TPS)")
    p.add_argument("--max_voxels", type=int, default=None, metavar="N",
                   help="refuse series with more than N voxels, before downloading them")
    p.add_argument("--max_tries", type=int, default=3,
                   help="park a series as failed after this many tries (a worker killed on it counts)")
    p.add_argument("--poll_seconds", type=float, default=5.0, help="seconds between looks at Orthanc's changes")
    p.add_argument("--dicom_uid_prefix", default=None, metavar="PREFIX",
                   help="root for the sCT's UIDs, e.g. your organisation's '1.2.3.4.' (default: pydicom's)")
    p.add_argument("--once", action="store_true",
                   help="process the changes and series waiting now, then exit (default: run until stopped)")
    finish_parser(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dgcf_auto.dicom_node.status import status_text

    if args.status:
        print(status_text(args.state))
        return 0
    from dgcf_auto.atomic import folder_lock
    from dgcf_auto.dicom_node.orthanc import Orthanc
    from dgcf_auto.dicom_node.selection import SeriesFilter
    from dgcf_auto.dicom_node.worker import DicomNode, NodeOptions, read_password
    from dgcf_auto.errors import DGCFError
    from dgcf_auto.inference.api import load_predictor

    if args.m is not None and args.d is not None:
        raise DGCFError("give either -m MODEL_FOLDER or -d DATASET, not both")
    if args.password_file is not None and args.user is None:
        raise DGCFError("--password_file needs --user")
    if args.max_tries < 1:
        raise DGCFError(f"--max_tries must be at least 1, got {args.max_tries}")
    filters = [SeriesFilter.parse(text) for text in args.series_filter]
    password = read_password(args.password_file) if args.password_file is not None else None
    options = NodeOptions(state=args.state, modality=args.modality, filters=filters, forward=args.forward,
                          max_voxels=args.max_voxels, max_tries=args.max_tries, poll_seconds=args.poll_seconds,
                          uid_prefix=args.dicom_uid_prefix, once=args.once)
    with folder_lock(args.state, ".node.lock", busy=f"--state {args.state}: another dgcf_dicom_node (pid {{pid}}) "
                                                   f"works on it"):
        predictor = load_predictor(args.m if args.m is not None else args.d, folds=args.f, device=args.device,
                                   tta=not args.disable_tta, trainer=args.tr, plans=args.p, checkpoint=args.chk,
                                   precision=args.precision, progress=False)
        DicomNode(Orthanc(args.orthanc, args.user, password), predictor, options).run()
    return 0


if __name__ == "__main__":
    main()
