"""``hmrcritic memory ...``: inspect, search, export/import and reset the Chroma dual memory."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hmrcritic.commands import CHROMA_URL_HELP

memory_app = typer.Typer(
    help="The critic's dual memory (Chroma): rules and prototypes.\n\n"
    "Examples: `hmrcritic memory stats`, `hmrcritic memory rules --tags legs,hyperextension`, "
    "`hmrcritic memory search \"feet below the floor\"`, `hmrcritic memory export mem.json`, "
    "`hmrcritic memory reset --yes`.",
    no_args_is_help=True,
)

_DIR = typer.Option(None, "--memory-dir", help="Memory folder (default: HMRCRITIC_MEMORY or <home>/memory).")
# the default is the server HMRCRITIC_CHROMA_URL names, when set (MemoryStore falls back to it): "embedded on disk"
# sent a user with the variable in a profile to `memory stats` expecting the folder, and it read the server
_URL = typer.Option(None, "--chroma-url", help=CHROMA_URL_HELP)
_JSON = typer.Option(False, "--json", help="Machine-readable output.")


def check_chroma_url(chroma_url: str | None) -> str | None:
    """``--chroma-url`` as given, refused when it is empty or blank.

    ``--chroma-url "$URL"`` with the variable unset or empty reached the commands as ``""``, which each read its
    own way: ``memory stats`` opened the memory folder on disk whatever HMRCRITIC_CHROMA_URL said, while
    ``memory reset --yes`` fell back to that variable's server (or, with none set, reset the memory on disk, not
    the server the script meant); ``" "`` was taken as a server address ("cannot reach the Chroma server at  :")."""
    if chroma_url is not None and not chroma_url.strip():
        from hmrcritic.errors import InputError

        raise InputError("--chroma-url is empty: give the Chroma server's address (http://host:port), or leave the "
                         "option out to use HMRCRITIC_CHROMA_URL, else the memory folder on disk (nothing was done)")
    return chroma_url


def _open(memory_dir: Path | None, chroma_url: str | None):
    """Open for reading: read-only when a memory exists (never modifies it); a missing default memory is
    created and seeded, which is what every other command would see. A ``--memory-dir`` that holds no memory
    is an error naming it (a typo must not create and seed a new memory there)."""
    from hmrcritic import config
    from hmrcritic.memory.store import MemoryStore, holds_memory

    chroma_url = check_chroma_url(chroma_url)
    path = memory_dir or config.memory_dir()
    # a server named by HMRCRITIC_CHROMA_URL is read as one named by --chroma-url: whether the local folder held
    # a memory on disk decided it, so an empty server was created and seeded by a look, or refused, by that
    exists = bool(chroma_url or config.env_chroma_url()) or holds_memory(Path(path))
    return MemoryStore(path, chroma_url=chroma_url, read_only=exists or memory_dir is not None)


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@memory_app.command("stats")
def stats(memory_dir: Path = _DIR, chroma_url: str = _URL, as_json: bool = _JSON) -> None:
    """Counts, content version, embedding identities and folder."""
    st = _open(memory_dir, chroma_url).stats()
    if as_json:
        _print_json(st)
        return
    rows: list[tuple[str, str]] = []
    for k, v in st.items():
        if k == "embeddings":
            rows += [(f"embedding {name}", f"{e['id']} (dim {e['dim']})") for name, e in v.items()]
        elif k == "calibration":
            rows.append((k, describe_calibration(v)))
        elif k == "read_only":
            # how this command opened the memory, not a property of it: "read_only True" read as a frozen memory
            # (the --json key keeps its name)
            rows.append(("opened", "read-only (stats only reads it; not a setting of the memory)" if v else
                         "for writing (this command created and seeded it)"))
        elif isinstance(v, dict):  # rules_by_origin: a Python dict's repr ("{'starter': 18, …}") was printed
            rows.append((k, ", ".join(f"{a} {b}" for a, b in v.items())))
        else:
            rows.append((k, str(v)))
    # one column for the values: "embedding episodic_prototypes" (29 characters) pushed its value out of the
    # 26-character column the others line up in
    width = max(26, *(len(label) + 1 for label, _ in rows))
    for label, value in rows:
        typer.echo(f"{label:<{width}} {value}")


def describe_calibration(cal: dict | None) -> str:
    """One line for a ``stats()["calibration"]`` entry."""
    if not cal:
        return "none (explore with the builtin judge to fit one)"
    from hmrcritic.redact import printable

    # judge, split and first group are words of whoever wrote the memory (an imported file's calibration): their
    # escape sequences reached the terminal from `memory stats` and `memory calibration`, a "\r" rewrote the line
    judge, split, first = (printable(" ".join(str(cal[k]).split())) for k in ("judge", "split", "first_group"))
    from hmrcritic.agent.api import error_metric_name

    onto = error_metric_name(str(cal.get("error_metric") or "pa_mpjpe"))  # absent: fitted before it was recorded
    return (f"log s' = {cal['intercept']:.3f} + {cal['slope']:.3f}·log s ({judge} judge; onto {printable(onto)}; "
            f"fitted on "
            f"{cal['groups']} {split} groups from {first or '?'}, {cal['hypotheses']} "
            f"hypotheses: point-wise r {cal['pearson_before']:.3f} → {cal['pearson_after']:.3f})"
            + ("; STALE: the rules changed since" if cal.get("stale") else ""))


@memory_app.command("calibration")
def calibration(
    clear: bool = typer.Option(False, "--clear", help="Remove the stored calibration (scores go back to raw)."),
    memory_dir: Path = _DIR, chroma_url: str = _URL, as_json: bool = _JSON,
) -> None:
    """The score calibration exploration fitted: how the judge's raw overall maps onto the true-error scale."""
    from hmrcritic.memory.store import MemoryStore, holds_memory

    if clear:
        from hmrcritic.config import env_chroma_url

        server = check_chroma_url(chroma_url) or env_chroma_url()
        if memory_dir is not None and not server and not holds_memory(Path(memory_dir)):
            # as _open: a mistyped --memory-dir must not create and seed a new memory just to clear nothing there
            from hmrcritic.errors import InputError

            if Path(memory_dir).exists() and not Path(memory_dir).is_dir():  # in the words of the other commands
                raise InputError(f"a file is where a folder is needed: {Path(memory_dir).absolute()} (a memory is a "
                                 "folder)")
            raise InputError(f"memory calibration --clear: no memory at {memory_dir}; nothing to clear")
        store = MemoryStore(memory_dir, chroma_url=chroma_url)
        store.set_calibration(None)
        if as_json:  # --json was accepted and then ignored: a script's json.loads failed on the sentence
            _print_json({"cleared": True, "location": str(store.location), "version": store.version(),
                         "calibration": None})
        else:
            typer.echo(f"calibration cleared at {store.location} (version {store.version()})")
        return
    st = _open(memory_dir, chroma_url).stats()["calibration"]
    _print_json(st) if as_json else typer.echo(describe_calibration(st))


@memory_app.command("rules")
def rules(
    tags: str = typer.Option("", "--tags", help="Comma-separated query tags (default: none)."),
    k: int = typer.Option(0, "-k", min=0, help="Show only the k best (0 = all)."),
    ucb_c: float = typer.Option(None, "--ucb-c", min=0.0,
                                help="Exploration constant C of the UCB bonus (default: HMRCRITIC_UCB_C, else 1.0)."),
    include_retired: bool = typer.Option(False, "--all", help="Also list retired rules (at the end)."),
    memory_dir: Path = _DIR, chroma_url: str = _URL, as_json: bool = _JSON,
) -> None:
    """Rules sorted by retrieval score Ψ (docs/PAPER.md §2) with their success rates."""
    import math

    from hmrcritic.memory.starter_rules import TAG_VOCABULARY, normalise_tags

    if ucb_c is None:
        # the C the agent retrieves with (AgentConfig reads HMRCRITIC_UCB_C): a fixed 1.0 here listed the rules in
        # another order than the critiques of a user with the variable set recalled them
        from hmrcritic.config import env_number

        ucb_c = env_number("HMRCRITIC_UCB_C", 1.0, float, minimum=0)
    if not math.isfinite(ucb_c):
        # ``--ucb-c inf`` passed the ``min=0`` check: every Ψ came out nan (∞ × 0 for an unused rule), listed in
        # an arbitrary order, and ``--json`` printed ``NaN``, which is not JSON
        from hmrcritic.errors import InputError

        raise InputError(f"memory rules: --ucb-c must be a finite number ≥ 0, got {ucb_c:g}")
    query = [t.strip() for t in tags.split(",") if t.strip()]
    # retrieval keeps only vocabulary tags: a typo ("leg") was dropped without a word while the table's title
    # still named it, so the listing looked tag-ranked when it was not
    unknown = [t for t in query if not normalise_tags([t])]
    if unknown:
        from hmrcritic.errors import InputError

        raise InputError(f"memory rules: unknown tag(s) {', '.join(unknown)}; known: {', '.join(TAG_VOCABULARY)}")
    store = _open(memory_dir, chroma_url)
    scored = store.rules.scored(query, ucb_c=ucb_c)
    if k > 0:
        scored = scored[:k]
    retired = [r for r in store.rules.all(include_retired=True) if r.retired] if include_retired else []
    rows = [(r, psi) for r, psi in scored] + [(r, None) for r in retired]
    if as_json:
        _print_json([{**r.model_dump(mode="json"), "psi": psi, "success_rate": r.success_rate}
                     for r, psi in rows])
        return
    import sys

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from hmrcritic.commands import is_tty
    from hmrcritic.redact import printable

    console = Console(width=None if is_tty(sys.stdout) else 160)  # piped: rich would squeeze it into 80 columns
    # eight columns need about 140 of them: in an 80-column terminal rich levelled the wrappable ones, and each
    # rule's text came out 4 characters wide, one word-piece a line. Narrower, a rule is one cell: its id and
    # counts, its text, then its condition and tags, with the width left by Ψ
    wide = console.width >= 140
    table = Table(title=f"rules (query tags: {','.join(query) or '-'}; C={ucb_c})")
    for col in ("Ψ", "id", "used", "success", "rate", "tags", "condition", "text") if wide else ("Ψ", "rule"):
        table.add_column(col, overflow="fold", no_wrap=col in ("Ψ", "id", "rate"))
    for r, psi in rows:
        c = r.condition
        # the measure is a name from an imported file as much as the text is: as a plain str cell, "[/b]" in it
        # was rich markup (a MarkupError ended the listing) and its escape sequences reached the terminal
        cond = printable(f"{c.measure} {c.comparator} {c.threshold:g} → −{c.points:g}"
                         + (f" per {c.per:g}" if c.per else "") + (" (hard)" if c.hard else "")) if c else ""
        rate = f"{r.success_rate:.2f}" if r.n_used else "-"
        shown = "retired" if psi is None else f"{psi:.3f}"
        # rule texts come from a VLM or an imported file: as rich Text, "[/b]" in one is words, not markup (it
        # was a MarkupError that ended the listing, and "[red]" recoloured the rest); escape sequences as "?"
        if wide:
            table.add_row(shown, Text(printable(r.rule_id)), str(r.n_used), str(r.n_success), rate,
                          ",".join(r.tags), Text(cond), Text(printable(r.text)))
            continue
        cell = Text.assemble((printable(r.rule_id), "bold"),
                             f"  used {r.n_used}, success {r.n_success}, rate {rate}\n{printable(r.text)}")
        more = "; ".join(x for x in (f"if {cond}" if cond else "", "tags " + ",".join(r.tags) if r.tags else "") if x)
        if more:
            cell.append("\n" + more, style="dim")
        table.add_row(shown, cell)
    console.print(table)


@memory_app.command("search")
def search(
    query: str = typer.Argument(..., help="Free text, e.g. 'knee bent backwards'."),
    k: int = typer.Option(5, "-k", min=1, help="How many rules."),
    memory_dir: Path = _DIR, chroma_url: str = _URL, as_json: bool = _JSON,
) -> None:
    """Rules nearest in meaning to QUERY (all-MiniLM-L6-v2 text embeddings, cosine)."""
    if not query.strip():
        from hmrcritic.errors import InputError

        raise InputError("memory search: give some text to search for, e.g. 'knee bent backwards'")
    hits = _open(memory_dir, chroma_url).rules.search(query, k=k)
    _note_cut_query(query)
    if as_json:
        _print_json([{**r.model_dump(mode="json"), "similarity": s} for r, s in hits])
        return
    from hmrcritic.redact import printable

    for r, s in hits:  # a VLM's or an imported file's words: their escape sequences must not reach the terminal
        # one hit a line: a "\r" in a rule text sent the cursor back to overwrite the hit's similarity and id with
        # words of the text, and a newline split one hit over lines that read as hits without a score
        typer.echo(f"{s:.3f}  {printable(r.rule_id):<28} {printable(' '.join(r.text.split()))}")


def _note_cut_query(query: str) -> None:
    """A note on stderr when the text model read only the start of ``query``: it keeps 256 word pieces and drops
    the rest without a word, so a long query (a pasted paragraph) was answered for its first sentences as if for
    the whole of it (a 10,000-character one: other rules, other similarities than its words asked for)."""
    from hmrcritic.memory.embeddings import LONE_SURROGATE, _text_model

    model = _text_model()
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:  # another encoder: nothing to say
        return
    # as embed_text reads it: the tokenizer refuses a lone surrogate (a non-UTF-8 byte of argv) with a TypeError
    enc = tokenizer.encode(LONE_SURROGATE.sub("\ufffd", query))
    if enc.overflowing:
        read = max((end for _, end in enc.offsets), default=0)  # where the last word piece read ends
        typer.echo(f"note: the query is longer than the text model reads ({model.max_length} word pieces): only "
                   f"its first {read:,} of {len(query):,} characters were compared", err=True)


@memory_app.command("export")
def export(
    file: Path = typer.Argument(..., help="JSON file to write (rules and prototypes, with embeddings)."),
    memory_dir: Path = _DIR, chroma_url: str = _URL, as_json: bool = _JSON,
) -> None:
    """Write the whole memory to a JSON file (with its calibration and the record of the groups it was explored
    on, and its exploration progress)."""
    from hmrcritic.commands import check_output_file
    from hmrcritic.memory.store import check_export_target

    check_chroma_url(chroma_url)
    check_export_target(file)  # before the memory is opened: the user's first mistake is the one to hear about
    check_output_file(file, "memory export")
    import os

    # a file where the export's folder goes (``memory export notes.txt/mem.json``) failed only when writing, after
    # the memory was opened — on a fresh home, the default memory created and seeded for an export that wrote nothing
    first = next(p for p in file.absolute().parents if os.path.lexists(p))
    if not first.is_dir():
        from hmrcritic.errors import InputError

        raise InputError(f"memory export: {first} is a file, so {file} cannot be written inside it (nothing was "
                         "exported)")
    out = _open(memory_dir, chroma_url).export_json(file)
    explored = (f", the {out['explored_groups']} group ids it was explored or calibrated on (the evaluation guard)"
                if out["explored_groups"] else "")
    _print_json(out) if as_json else typer.echo(
        f"wrote {file}: {out['rules']} rules, {out['prototypes']} prototypes{explored} (version {out['version']})")


@memory_app.command("import")
def import_(
    file: Path = typer.Argument(..., help="A file written by `hmrcritic memory export`."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace same-id rules always."),
    memory_dir: Path = _DIR, chroma_url: str = _URL, as_json: bool = _JSON,
) -> None:
    """Merge an exported memory into this one (new ids added; a known rule is replaced only when the file's
    copy has more uses, or with --overwrite). The groups the file's memory was explored on join this memory's
    record, so evaluation stays refused on them; its exploration progress is taken when this memory has none."""
    import os

    from hmrcritic.config import env_chroma_url
    from hmrcritic.memory.store import MemoryStore

    check_chroma_url(chroma_url)
    if not file.exists() or file.is_dir():  # exists: /dev/stdin (an export piped in) is no regular file
        # before the memory is opened: opening a --memory-dir that holds none creates and seeds one, so a mistyped
        # file name left a new memory folder behind (or the default memory created) for an import that did nothing
        from hmrcritic.errors import InputError

        raise InputError(f"memory import: {'a folder, not a file:' if file.is_dir() else 'no file'} {file} "
                         "(nothing was imported)")
    # the folder this import creates, if it does (a new --memory-dir, the top one of the folders made for it): the
    # file is checked only once the memory is open, so an import of another JSON, a newer export or a truncated
    # file said "nothing was imported" and left a new memory seeded with the starter rules in the named folder
    made = None
    if memory_dir is not None and not (chroma_url or env_chroma_url()):
        probe = Path(memory_dir).absolute()
        while not os.path.lexists(probe) and probe != probe.parent:
            made, probe = probe, probe.parent
    from contextlib import nullcontext

    from hmrcritic.memory.store import hold_exclusive

    # held for the import (the store's own hold is re-entrant) from before the memory is made: a second import
    # into the same new folder fails to take it at once, outside the clean-up below, so it never removes a memory
    # the first one made and filled
    with hold_exclusive(memory_dir, "a memory import") if made is not None else nullcontext():
        store = None
        try:
            store = MemoryStore(memory_dir, chroma_url=chroma_url)
            counts = store.import_json(file, overwrite=overwrite)
        except BaseException:
            if made is not None:
                import shutil

                if store is not None:
                    store.close()
                shutil.rmtree(made, ignore_errors=True)
            raise
    counts["version"] = store.version()
    if as_json:
        _print_json(counts)
        return
    typer.echo(f"imported {file} into {store.location}: " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    if counts["rules_skipped"]:
        # "rules_skipped: 18" alone read as a failed import (a new memory is seeded with the starter rules, which an
        # export of another memory holds too)
        typer.echo(f"{counts['rules_skipped']} rule(s) skipped: this memory holds them already, used as often or "
                   "more (--overwrite replaces them with the file's)")
    taken = [what for what, got in ((f"the {counts['explored_groups']} explored group ids (the evaluation guard)",
                                     counts["explored_groups"]),
                                    ("the exploration progress", counts["explore_progress"])) if got]
    if store.chroma_url and taken:
        # "imported … into http://host:8000: … explored_groups: 2" read as if the guard were now on the server,
        # for every machine; a server memory keeps these records in the local folder (README), so a process
        # using another --memory-dir (another machine) neither sees the guard nor the progress
        typer.echo(f"note: {' and '.join(taken)} went into this machine's folder for the server memory, "
                   f"{store.path}, not onto the server: explore and evaluate it from here, with that folder")


@memory_app.command("reset")
def reset(
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    no_seed: bool = typer.Option(False, "--no-seed", help="Start empty instead of with the starter rules."),
    memory_dir: Path = _DIR, chroma_url: str = _URL,
) -> None:
    """Delete every rule and prototype and start again (seeded with the starter rules)."""
    from hmrcritic.config import env_chroma_url
    from hmrcritic.memory.store import COLLECTIONS, EXPLORE_FILES, MemoryStore, hold_exclusive, reach_server, resetting
    from hmrcritic.redact import redact_url

    # the server MemoryStore would pick up from the environment is the one to drop (dropping the folder's
    # collections instead left a mismatched server memory failing on the very check that says to reset it)
    chroma_url = check_chroma_url(chroma_url) or env_chroma_url()

    path = memory_dir
    if path is None:
        from hmrcritic import config

        path = config.memory_dir()
    # the folder by name: "in the default memory folder?" did not say that HMRCRITIC_MEMORY (set in a profile,
    # a job's environment) had moved it somewhere else; no password in the prompt
    # absolute: "Delete all rules and prototypes in m2?" named the folder relative to a working directory the
    # question does not show (the line after a reset names it absolute)
    where = redact_url(chroma_url) or str(Path(path).absolute())
    if not chroma_url:
        probe = Path(path).absolute()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            # as every other memory command says it, and before the question: a reset of a memory folder that is a
            # file asked to delete it and then failed as "File exists: … (… is a file, where a folder is needed)"
            from hmrcritic.errors import InputError

            raise InputError(f"a file is where a folder is needed: {probe} (a memory is a folder)")
    location = None
    if chroma_url:
        # before the question (and so before marking it): a server that is down or refuses the password was asked
        # about ("Delete all rules … ? [y/N]: y") and only then said to be unreachable; a reset that cannot reach
        # the server must also leave its memory openable
        reach_server(chroma_url)
        folder = Path(path).expanduser().resolve()
        # "in http://host:8000?" did not say it was a server, nor that the exploration records the server
        # memory keeps in this machine's folder go with it (reset deletes them)
        records = [n for n in EXPLORE_FILES if (folder / n).exists()]
        where = f"the memory on the Chroma server at {where}" + (
            f" (and its exploration records in {folder})" if records else "")
        # as MemoryStore.exclusive names a server memory: "memory at <folder> is busy with a memory reset" named
        # only the lock folder, not the server the other reset is working on
        location = f"{redact_url(chroma_url)} (its folder on this machine, {folder}, for the write lock and records)"
    # asked on stderr, as `runs prune` asks: on stdout the question went into `… > reset.log` and the command
    # sat waiting for an answer nobody could see
    if not yes:
        from hmrcritic.commands import confirm_or_stop

        confirm_or_stop(f"Delete all rules and prototypes in {where}?", "nothing deleted")
    # hold the memory before touching it: a reset refused because an exploration runs must delete nothing
    # marked as being reset before anything is dropped: a reset cut short is refused until run again
    with hold_exclusive(path, "a memory reset", location=location), resetting(path, chroma_url):
        # drops without opening, so it works even on a memory built with another embedding (disk or server)
        MemoryStore.drop_collections(Path(path), list(COLLECTIONS), chroma_url=chroma_url)
        store = MemoryStore(path, chroma_url=chroma_url, seed_starter=False)
        store.reset(seed_starter=not no_seed)
    st = store.stats()
    typer.echo(f"memory reset at {st['location']}: {st['rules']} rules, {st['prototypes']} prototypes "
               f"(version {st['version']})")


def register(app: typer.Typer) -> None:
    app.add_typer(memory_app, name="memory")
