"""`lactron data ...` subcommands. The main CLI mounts them with `register(data_subparsers)`.

    lactron data prepare-text                       # the stdlib's .py files -> runs/data/stdlib, seq_len 512
    lactron data prepare-text --inputs ~/src --pattern '*.md' --out runs/data/notes --seq-len 1024

Standalone (no main CLI needed): python -m lactron.data.cli prepare-text --help
"""

import argparse
import sys

from lactron.data.errors import DataError


def register(subparsers) -> None:
    """Add the data subcommands to an argparse subparsers object; each sets `func(args) -> exit code`."""
    p = subparsers.add_parser(
        "prepare-text", help="pack text files into token shards (default: the Python stdlib source)",
        description="Tokenize text files (byte tokenizer, one EOS per file), shuffle them with --seed, cut the "
                    "stream into samples of seq_len + 1 tokens and write webdataset shards + index.json. With no "
                    "--inputs the Python standard library's .py sources are used (site-packages excluded), so "
                    "nothing needs downloading.")
    p.add_argument("--out", default="runs/data/stdlib", help="output dataset directory (default: %(default)s)")
    p.add_argument("--inputs", nargs="*", default=None, metavar="PATH",
                   help="files and/or directories to read (directories are searched recursively for --pattern); "
                        "default: the Python standard library source tree")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per training sequence (default: %(default)s)")
    p.add_argument("--pattern", default="*.py", help="file name glob inside directories (default: %(default)s)")
    p.add_argument("--samples-per-shard", type=int, default=256, help="samples per tar shard (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.01,
                   help="fraction of samples (taken from the end) for the val split (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens (default: all)")
    p.add_argument("--seed", type=int, default=0, help="document shuffle seed (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace the dataset in a non-empty --out directory")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=prepare_text_command)


def prepare_text_command(args: argparse.Namespace) -> int:
    from lactron.data.text_shards import prepare_text  # imported here: `lactron --help` stays fast

    try:
        s = prepare_text(args.out, args.inputs or None, seq_len=args.seq_len, pattern=args.pattern,
                         samples_per_shard=args.samples_per_shard, val_fraction=args.val_fraction,
                         max_tokens=args.max_tokens, seed=args.seed, overwrite=args.overwrite,
                         progress=args.progress)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {s['out_dir']}: {s['samples']['train']} train + {s['samples']['val']} val samples of "
          f"{args.seq_len + 1} tokens in {s['shards']['train']} + {s['shards']['val']} shards; {s['tokens']:,} tokens "
          f"from {s['documents']} documents ({s['files']} files found, {s['skipped_files']} skipped) "
          f"in {s['seconds']:.1f} s")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lactron data", description="lactron dataset preparation")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
