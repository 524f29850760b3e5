"""The client's strategy state (SCAFFOLD's c_i, FedDyn's g_k) on the node's disk, so a restarted SuperNode goes on.

Flower keeps `Context.state` in memory only, and a resumed run is a new Flower run (a new
`run_id`, an empty `Context.state`). So after each train the node writes its state to
`<cache_dir>/client_state/<run_key>/<partition>.safetensors`, where `run_key` is the id the
server draws at the run's first start and keeps in its checkpoint (stable across resumes and
SuperLink restarts, unlike Flower's run_id), sent in every train config.

The file holds two slots, the state made in the latest round trained and the one before it: a
server resumed from its checkpoint of round k trains round k+1 again, which a node may already
have trained before the crash, and must then start from its state of round k or earlier.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from fedmemes.bookkeeping import private_files

log = logging.getLogger(__name__)

FOLDER = "client_state"
RUN_KEY = "run_key"  # train config key: the run's id for client-side files
STARTED_FROM = "latest_from"  # file metadata: the round of the state the latest slot's round started from
MADE_IN = "fedmemes_state_round"  # context.state config record: the round the arrays there were made in
_SAFE_KEY = re.compile(r"^[0-9a-f]{8,64}$")  # a run key names a folder: hex only, never a path


def state_file(cache_dir: str | Path, run_key: str, partition: int) -> Path | None:
    """Return this node's state file for the run (None when the server sent no usable run key)."""
    if not _SAFE_KEY.match(run_key):
        return None
    return Path(cache_dir) / FOLDER / run_key / f"{int(partition)}.safetensors"


def _made_in(state: RecordDict) -> int | None:
    record = state.config_records.get(MADE_IN)
    return None if record is None else int(record["round"])  # type: ignore[arg-type]  # written as an int below


def _slots(path: Path) -> list[tuple[int, dict[str, dict[str, torch.Tensor]]]]:
    """Return the file's (round, {record: tensors}) slots, newest first ([] when missing or unreadable)."""
    if not path.is_file():
        return []
    try:
        with safe_open(str(path), "pt") as handle:  # the rounds live in the header's metadata
            meta = handle.metadata() or {}
            flat = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118  safe_open is no dict
    except (SafetensorError, OSError, ValueError) as err:
        log.warning("client state %s cannot be read (%s): starting this client's state from zero", path, err)
        return []
    slots: list[tuple[int, dict[str, dict[str, torch.Tensor]]]] = []
    for slot in ("latest", "before"):
        if slot not in meta:
            continue
        records: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in flat.items():
            owner, record, name = key.split("/", 2)
            if owner == slot:
                records.setdefault(record, {})[name] = tensor
        slots.append((int(meta[slot]), records))
    return sorted(slots, key=lambda s: -s[0])


def restore(state: RecordDict, path: Path | None, server_round: int) -> None:
    """Before training `server_round`: leave in `state` the newest state made in an earlier round (memory or disk)."""
    made = _made_in(state)
    if made is not None and made < server_round:
        return  # this process trained the rounds before: its memory is current
    for name in list(state.array_records):  # made in this round or later: a round trained again after a resume
        del state[name]
    if path is None:
        return
    for made, records in _slots(path):
        if made < server_round:
            for name, tensors in records.items():
                state[name] = ArrayRecord(tensors)
            state[MADE_IN] = ConfigRecord({"round": made})
            log.info("client state of round %d restored from %s", made, path)
            return


def save_state(state: RecordDict, path: Path | None, server_round: int) -> None:
    """After training `server_round`: write the state it made beside the newest earlier one (atomically)."""
    started = _made_in(state)  # the round of the state this round went on from (memory or disk); None: from zero
    state[MADE_IN] = ConfigRecord({"round": server_round})
    if path is None or not state.array_records:
        return
    tensors = {
        f"latest/{record}/{name}": t.contiguous()
        for record, arrays in state.array_records.items()
        for name, t in arrays.to_torch_state_dict().items()
    }
    meta = {"latest": str(server_round)}
    if started is not None and started < server_round:  # provenance: a restarted node shows what it went on from
        meta[STARTED_FROM] = str(started)
    earlier = next(((m, r) for m, r in _slots(path) if m < server_round), None)
    if earlier is not None:
        meta["before"] = str(earlier[0])
        tensors.update({f"before/{record}/{n}": t for record, ts in earlier[1].items() for n, t in ts.items()})
    for folder in (path.parent.parent, path.parent):  # client_state/ and the run's folder: owner-only, like the files
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_files.write_bytes(path, save(tensors, metadata=meta))
