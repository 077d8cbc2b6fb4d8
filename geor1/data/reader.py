"""The one shard reader of geor1: WebDataset URL specs -> shard URLs -> opened streams -> raw samples.

Every reader of shards (the streaming DataModules, index building, CoT synthesis, evaluation, `data inspect`) goes
through the stages below, built on the `webdataset` package:

    shard_urls    a `roots` spec -> shard URLs: a dataset folder (manifest + split), a glob, a brace range
                  (`train-{000000..000009}.tar`), `pipe:` commands, `file:` and `http(s):` URLs
    open_shards   {"url"} -> {"url", "stream"}: `webdataset.gopen` (http(s) in-process through urllib, so an
                  unreachable server is a clear error at once instead of curl's minute of retries)
    tar_samples   {"url", "stream"} -> raw samples {"__key__", "__url__", <ext>: bytes}: `tar_members` reads the
                  file records webdataset's `tar_file_iterator` yields (at a sixth of its cost per member, which
                  matters next to decoding small JPEGs) and webdataset's `group_by_keys` groups them; what plain
                  webdataset lacks: a shard cut short (mid-file, or on a header boundary, where tarfile stops
                  quietly and webdataset then yields a half sample) is warned about by name and its incomplete
                  sample never yielded; the complete samples before the damage still arrive

A file name splits at the first dot of its basename, as in WebDataset: `abc.ground.jpg` -> key `abc`, extension
`ground.jpg` (extensions keep their case).
"""

from __future__ import annotations

import glob
import http.client
import logging
import lzma
import re
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import webdataset as wds
from webdataset.tariterators import group_by_keys

from geor1 import Geor1Error
from geor1.data.shards import folder_shards

log = logging.getLogger(__name__)

REMOTE_SCHEMES = ("pipe:", "http://", "https://")
HTTP_TIMEOUT_S = 60.0


class TruncatedShard(tarfile.TarError):
    pass


# ---------------------------------------------------------------------------------------------------- URL specs
def is_remote(url: str) -> bool:
    """A URL that is not a local path: `pipe:`, `http(s):`, or another scheme (`webdataset.gopen` knows `gs:`,
    `ais:`, `hf:`, ...); `file:` URLs and plain paths are local."""
    scheme = urlparse(url).scheme
    return url.startswith(REMOTE_SCHEMES) or (len(scheme) > 1 and scheme != "file")


def _local_path(spec: str) -> str:
    return url2pathname(urlparse(spec).path) if spec.startswith("file:") else spec


def expand_spec(spec: str) -> list[str]:
    """A WebDataset URL spec -> URLs: `::`-separated parts, each brace-expanded, local paths glob-expanded (sorted).
    Geor1Error naming the spec when it expands to nothing, a glob matches no file or it names a local file that does
    not exist."""
    urls: list[str] = []
    for url in wds.shardlists.expand_urls(spec):
        if is_remote(url):
            urls.append(url)
            continue
        path = _local_path(url)
        if glob.has_magic(path):
            matches = sorted(glob.glob(path))
            if not matches:  # one mistyped part of a `::` spec must not leave the others to run alone
                raise Geor1Error(f"shard spec {spec!r}: the glob {path!r} names no shard")
            urls += matches
        elif Path(path).is_file():
            urls.append(path)
        else:
            raise Geor1Error(f"shard spec {spec!r}: no such file {path!r}")
    if not urls:
        raise Geor1Error(f"shard spec {spec!r} names no shard (an empty glob or brace range?)")
    return urls


def shard_urls(spec: str | Path, split: str) -> list[str]:
    """The shard URLs of `split` named by `spec`, in order.

    - a local dataset folder (or `file:` URL of one): its manifest's shards of `split`, else `<split>-*.tar` in it;
    - anything else is a WebDataset URL spec: `::`-separated parts, each brace-expanded (`{000000..000009}`, `{a,b}`)
      and, for local paths, glob-expanded (`*`, `?`, `[...]`). `{split}` in the spec is replaced by the split name;
      without it, the URLs must name their split (`.../<split>-...`), and those of `split` are kept.

    An empty list when the split has no shard (a folder without them, URLs of other splits only): the caller
    decides whether that is an error (a training split) or not (a validation split one root lacks). Raises
    Geor1Error naming the spec when it names nothing at all: a folder that does not exist (a misspelt root must not
    leave the other roots to train alone), a spec that expands to nothing, a local file that does not exist.
    """
    text = str(spec)
    local = _local_path(text)
    if Path(local).is_dir():  # first: a local folder named like `gw:v2` is no URL
        return [str(p) for p in folder_shards(local, split)]
    if not is_remote(text) and not Path(local).suffix and not any(c in local for c in "{}*?[:"):
        raise Geor1Error(_no_folder(local))
    has_split = "{split}" in text
    urls = expand_spec(text.replace("{split}", split))
    if has_split:
        return urls
    pattern = re.compile(rf"(?:^|[/\s:]){re.escape(split)}-[^/]*$")
    return [u for u in urls if pattern.search(u.split("?", 1)[0].rstrip(" -"))]


def _no_folder(path: str) -> str:
    """The message for a dataset folder that does not exist, with the nearest existing names beside it."""
    import difflib

    parent = Path(path).parent
    near = []
    if parent.is_dir():
        names = [p.name for p in parent.iterdir() if p.is_dir()]
        near = [str(parent / n) for n in difflib.get_close_matches(Path(path).name, names, n=3, cutoff=0.6)]
    hint = f" (did you mean {' or '.join(near)}?)" if near else " (misspelt, or not built yet?)"
    return f"no such shard folder: {path}{hint}"


def split_shards(root: str | Path, split: str) -> list[Path] | list[str]:
    """The shards of `split`: a local dataset folder's files (`geor1.data.shards.folder_shards`: from its manifest,
    else by name), or, for any other `root` (a WebDataset URL spec: glob, brace range, `pipe:`, `file:`,
    `http(s):`), its URLs of the split (`shard_urls`)."""
    if Path(root).is_dir():
        return folder_shards(root, split)
    return shard_urls(str(root), split)


# ---------------------------------------------------------------------------------------------------- opening
def open_url(url: str) -> Any:
    """A readable binary stream of `url`: http(s) through urllib, the rest through `webdataset.gopen`.
    Geor1Error naming the URL when it cannot be opened (missing file, unreachable server, HTTP error)."""
    try:
        if url.startswith(("http://", "https://")):
            return urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S)
        if not url.startswith("pipe:") and Path(url).is_file():  # a local file, even one urlparse sees a scheme in
            return open(url, "rb")
        return wds.gopen(url, "rb")
    except (OSError, urllib.error.URLError, ValueError) as e:
        raise Geor1Error(f"cannot open shard {url}: {type(e).__name__}: {e}") from None


def open_shards(src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Stage: {"url"} -> {"url", "stream"} (what `webdataset.tariterators.url_opener` does, with `open_url`)."""
    for source in src:
        yield dict(source, stream=open_url(source["url"]))


# ---------------------------------------------------------------------------------------------------- tar -> samples
def _read(stream: Any, n: int) -> bytes:
    """`n` bytes, or fewer only at the end of the stream (a stream may return short reads before it)."""
    data = stream.read(n)
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _octal(field: bytes) -> int:
    if field[:1] == b"\x80":  # GNU base-256, for sizes over 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").lstrip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise tarfile.ReadError(f"bad tar header number {field!r} (not a tar file, or a damaged one)") from None


def _pax_records(data: bytes) -> dict[str, str]:
    """`<len> <key>=<value>\\n` records of a pax extended header."""
    out, i = {}, 0
    while i < len(data):
        space = data.index(b" ", i)
        length = int(data[i:space])
        key, _, value = data[space + 1 : i + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        i += length
    return out


class _Prefixed:
    """`head` then the rest of `stream`: the bytes read to recognise a compressed shard, given back."""

    def __init__(self, head: bytes, stream: Any) -> None:
        self.head, self.stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n < 0:
                data, self.head = self.head + self.stream.read(), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            return data
        return self.stream.read(n)


def _decompressing(head: bytes, stream: Any) -> Any:
    """A decompressing reader over a gzip, bzip2 or xz shard whose first bytes are `head`; None for a plain tar."""
    prefixed: Any = _Prefixed(head, stream)  # a readable file object, as far as the decompressors go
    if head.startswith(b"\x1f\x8b"):
        import gzip

        return gzip.GzipFile(fileobj=prefixed)
    if head.startswith(b"BZh"):
        import bz2

        return bz2.BZ2File(prefixed)
    if head.startswith(b"\xfd7zXZ"):
        import lzma

        return lzma.LZMAFile(prefixed)
    return None


def tar_members(stream: Any, url: str) -> Iterator[dict[str, Any]]:
    """{"fname", "data", "__url__"} per regular file of a tar stream, in order: the records webdataset's
    `tar_file_iterator` yields (`__*__` metadata files skipped likewise), read without `tarfile`, whose per-member
    Python costs more than decoding the small JPEGs of a sample. Ustar, GNU long names, pax headers, and gzip, bzip2
    or xz compressed shards are read.

    Raises TruncatedShard when the stream ends inside a header or a file, or without the end-of-archive marker
    (two zero blocks): `tarfile` stops quietly when a cut falls on a header boundary. tarfile.ReadError for a header
    with a bad checksum (not a tar file, or a damaged one)."""
    header = _read(stream, 512)
    unpacked = _decompressing(header, stream)
    if unpacked is not None:
        stream = unpacked
        header = _read(stream, 512)
    if not header:
        raise TruncatedShard("empty file")
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        if len(header) < 512:
            raise TruncatedShard("ends inside a header")
        if header == _ZERO_BLOCK:
            if _read(stream, 512) != _ZERO_BLOCK:
                raise TruncatedShard("no end-of-archive marker")
            while stream.read(1 << 16):  # the padding to the record size (and a pipe's command ends writing)
                pass
            return
        if sum(header) - sum(header[148:156]) + 256 != _octal(header[148:156]):
            raise tarfile.ReadError("bad tar header checksum (not a tar file, or a damaged one)")
        kind = header[156:157]
        size = int(pax["size"]) if "size" in pax else _octal(header[124:136])
        padded = (size + 511) & ~511
        data = _read(stream, padded)
        if len(data) < padded:
            raise TruncatedShard("ends inside a file")
        if kind in (b"0", b"\0", b"7"):  # a regular file
            if long_name is not None:
                name = long_name
            elif "path" in pax:
                name = pax["path"]
            else:
                name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
                prefix = header[345:500].split(b"\0", 1)[0]
                if prefix and header[257:262] == b"ustar":
                    name = prefix.decode("utf-8", "replace") + "/" + name
            long_name, pax = None, {}
            if not _META.match(name):
                yield {"fname": name, "data": data[:size] if size != padded else data, "__url__": url}
        elif kind == b"L":  # GNU long name of the next member
            long_name = data[:size].rstrip(b"\0").decode("utf-8", "replace")
        elif kind == b"x":  # pax header of the next member
            pax = _pax_records(data[:size])
        else:  # directories, links, pax globals: no sample file
            long_name, pax = None, {}
        header = _read(stream, 512)


_ZERO_BLOCK = bytes(512)
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's `skip_meta`


def _duplicate_file(exn: Exception) -> bool:
    """group_by_keys handler: a file name twice in one sample keeps the first, with a warning."""
    log.warning("shard file skipped: %s", exn.args[0] if exn.args else exn)
    return True


def tar_samples(
    src: Iterable[dict[str, Any]], on_broken_shard: Callable[[dict[str, str]], Any] | None = None
) -> Iterator[dict[str, Any]]:
    """Stage: opened shards -> raw samples, one shard after another (see the module docstring). A shard that is
    truncated or unreadable is logged as a warning naming it and reported to `on_broken_shard` as
    {"shard", "error"}; the rest of the stream goes on."""
    for source in src:
        url = str(source["url"])
        stream = source["stream"]
        read_to_end = False
        try:
            # group_by_keys yields a sample when the next one starts, and the last one when the files end: a shard
            # cut short raises inside `tar_members` before that, so the incomplete sample is never yielded
            yield from group_by_keys(tar_members(stream, url), lcase=False, handler=_duplicate_file)
            read_to_end = True
        except (tarfile.TarError, OSError, EOFError, http.client.HTTPException, zlib.error, lzma.LZMAError) as e:
            log.warning(
                "shard %s is truncated or unreadable (%s: %s); skipping the rest of it", url, type(e).__name__, e
            )
            if on_broken_shard is not None:
                on_broken_shard({"shard": url, "error": f"{type(e).__name__}: {e}"})
        finally:
            try:
                stream.close()
            except OSError as e:  # a pipe's command that failed, or was cut off by a reader that stopped early
                (log.warning if read_to_end else log.debug)("shard %s: closing its stream: %s", url, e)


def iter_raw_samples(
    shards: Sequence[str | Path], on_broken_shard: Callable[[dict[str, str]], Any] | None = None
) -> Iterator[dict[str, Any]]:
    """Yield {"__key__", "__url__", <ext>: bytes} per sample of `shards` (paths or URLs), in order, through the
    same webdataset pipeline stages as the streaming DataModules."""
    if not shards:
        return iter(())
    pipeline = wds.DataPipeline(
        wds.SimpleShardList([str(s) for s in shards]),  # {"url"}
        open_shards,  # {"url", "stream"}
        lambda src: tar_samples(src, on_broken_shard),  # raw samples    <- the shape changes here
    )
    return iter(pipeline)
