"""`hfmini playground MODEL_DIR... --static SITE_DIR`: a page that runs the models in the browser.

    SITE_DIR/index.html                the page (static_page.html): prompt, length, greedy or
                                       sampled, Generate; transformers.js on WebAssembly
    SITE_DIR/models/<name>/            each model's browser files: config.json,
                                       generation_config.json, tokenizer.json,
                                       tokenizer_config.json, onnx/model.onnx
    SITE_DIR/vendor/                   with --js_dir (or HFMINI_TRANSFORMERS_JS): transformers.js's
                                       browser build and onnxruntime-web's wasm, copied from an npm
                                       install, so that the page needs no network; without it the
                                       page loads the pinned version from a public CDN

Any static server serves it (`python -m http.server -d SITE_DIR`); no Python runs the models. The
page must come over http(s): browsers refuse module scripts and fetch() from file:// pages.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hfmini.errors import HfminiError
from hfmini.outputs.onnx import ONNX_DIR, ONNX_FILE
from hfmini.run_folder import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
)

# The version the CDN page loads, and the one the browser test installs with npm.
TRANSFORMERS_JS_VERSION = "4.3.2"
CDN_LIBRARY = (
    f"https://cdn.jsdelivr.net/npm/@huggingface/transformers@{TRANSFORMERS_JS_VERSION}"
    "/dist/transformers.min.js"
)
JS_DIR_VARIABLE = "HFMINI_TRANSFORMERS_JS"
LIBRARY_FILE = "transformers.min.js"  # the self-contained browser build (onnxruntime-web inside)
# The wasm build transformers.js picks by default (its JSPI-free "asyncify" variant): about 27 MB.
WASM_FILES = ("ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")
MODEL_FILES = (CONFIG_FILE, GENERATION_CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE)
VENDOR_DIR = "vendor"
MODELS_DIR = "models"


@dataclass
class Library:
    """Where the page loads transformers.js from: the site's vendor/ copy, or the CDN."""

    url: str  # relative to the page, or absolute
    wasm: dict | None  # {"mjs": ..., "wasm": ...} relative to the page; None: the library's CDN
    version: str
    source: str  # what the printed line names: the npm folder, or the CDN


def find_node_modules(js_dir: str | Path) -> Path:
    """The node_modules folder of an npm install: `js_dir` itself, or the one inside it."""
    folder = Path(js_dir)
    for candidate in (folder, folder / "node_modules"):
        if (candidate / "@huggingface" / "transformers" / "package.json").is_file():
            return candidate
    raise HfminiError(
        f"{folder} holds no npm install of @huggingface/transformers: run `npm install "
        f"@huggingface/transformers@{TRANSFORMERS_JS_VERSION}` in a folder and pass its "
        f"node_modules (--js_dir or {JS_DIR_VARIABLE})"
    )


def library_files(node_modules: Path) -> tuple[list[Path], Library]:
    """The browser build and the onnxruntime-web wasm it was built against, checked, with where
    the page finds them once copied into site/vendor/.

    The wasm must be the exact onnxruntime-web version transformers.js pins: the JavaScript glue
    and the wasm binary change together between versions."""
    package = node_modules / "@huggingface" / "transformers"
    meta = json.loads((package / "package.json").read_text(encoding="utf-8"))
    wanted = meta.get("dependencies", {}).get("onnxruntime-web")
    # npm puts the pinned onnxruntime-web at the top, or nested when another version is there.
    for runtime in (package / "node_modules" / "onnxruntime-web", node_modules / "onnxruntime-web"):
        if (runtime / "package.json").is_file():
            found = json.loads((runtime / "package.json").read_text(encoding="utf-8"))["version"]
            if wanted is None or found == wanted or not wanted[:1].isdigit():  # a range: any
                break
    else:
        raise HfminiError(
            f"{node_modules} has @huggingface/transformers {meta['version']} without the "
            f"onnxruntime-web {wanted} it needs: run npm install again in that folder"
        )
    sources = [package / "dist" / LIBRARY_FILE, *(runtime / "dist" / name for name in WASM_FILES)]
    missing = [str(path) for path in sources if not path.is_file()]
    if missing:
        raise HfminiError(
            f"{missing[0]} is missing: this transformers.js has another layout; install "
            f"@huggingface/transformers@{TRANSFORMERS_JS_VERSION}"
        )
    library = Library(
        url=f"./{VENDOR_DIR}/{LIBRARY_FILE}",
        wasm={
            kind: f"./{VENDOR_DIR}/{name}"
            for kind, name in zip(("mjs", "wasm"), WASM_FILES, strict=True)
        },
        version=meta["version"],
        source=str(node_modules),
    )
    return sources, library


def model_names(model_dirs: list[str | Path]) -> list[str]:
    """Each folder's name, with -2, -3... for a name already taken (run/a/final, run/b/final)."""
    names: list[str] = []
    for folder in model_dirs:
        base = Path(folder).resolve().name or "model"
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}-{count}"
        names.append(name)
    return names


def check_browser_files(folder: Path) -> None:
    if not folder.is_dir():
        raise HfminiError(f"{folder} is not a folder: pass a model folder exported to ONNX")
    if not (folder / ONNX_DIR / ONNX_FILE).is_file():
        raise HfminiError(
            f"{folder} has no {ONNX_DIR}/{ONNX_FILE}: run hfmini export {folder} --format onnx "
            "first"
        )
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise HfminiError(
            f"{folder} has no {missing[0]}, which the page needs beside onnx/: copy it from the "
            "training run's output_dir"
        )


def copy_model(folder: Path, target: Path) -> None:
    """The browser files only: no safetensors (the page runs model.onnx), no checkpoints."""
    (target / ONNX_DIR).mkdir(parents=True, exist_ok=True)
    for name in (*MODEL_FILES, f"{ONNX_DIR}/{ONNX_FILE}"):
        shutil.copyfile(folder / name, target / name)


def page_html(names: list[str], max_new_tokens: int, library: Library) -> str:
    template = resources.files("hfmini.serving").joinpath("static_page.html")
    settings = {
        "models": names,
        "max_new_tokens": max_new_tokens,
        "library": library.url,
        "wasm": library.wasm,
    }
    # json.dumps keeps "</script>" out of the script only if "/" is escaped: names are folder
    # names, but a folder may be called anything.
    return template.read_text(encoding="utf-8").replace(
        "__SETTINGS__", json.dumps(settings).replace("</", "<\\/")
    )


def write_static_page(
    model_dirs: list[str | Path],
    site_dir: str | Path,
    max_new_tokens: int,
    js_dir: str | Path | None = None,
) -> Path:
    """Write the site for `model_dirs` into `site_dir`; returns its index.html.

    `js_dir`: an npm install's node_modules (default: $HFMINI_TRANSFORMERS_JS) to copy
    transformers.js from, so that the page works offline; None: the CDN.
    """
    if max_new_tokens < 1:
        raise HfminiError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    folders = [Path(folder) for folder in model_dirs]
    for folder in folders:  # every model checked before anything is written
        check_browser_files(folder)
    js_dir = js_dir or os.environ.get(JS_DIR_VARIABLE) or None
    vendored: list[Path] = []  # the library's files to copy into site/vendor/
    library = Library(CDN_LIBRARY, None, TRANSFORMERS_JS_VERSION, "cdn.jsdelivr.net")
    if js_dir:
        vendored, library = library_files(find_node_modules(js_dir))
    site = Path(site_dir)
    if site.exists() and not site.is_dir():
        raise HfminiError(f"{site} is a file: pass a folder for the site")
    site.mkdir(parents=True, exist_ok=True)
    if vendored:
        (site / VENDOR_DIR).mkdir(exist_ok=True)
    for path in vendored:
        shutil.copyfile(path, site / VENDOR_DIR / path.name)
    names = model_names(folders)
    for folder, name in zip(folders, names, strict=True):
        copy_model(folder, site / MODELS_DIR / name)
    # The page last, through a temporary file: a half-written site has no index.html to open.
    handle, temporary = tempfile.mkstemp(prefix=".index-", suffix=".html", dir=site)
    with os.fdopen(handle, "w", encoding="utf-8") as page:
        page.write(page_html(names, max_new_tokens, library))
    os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from a web server's user
    index = site / "index.html"
    os.replace(temporary, index)
    if library.wasm is None:
        where = (
            f"transformers.js {library.version} from {library.source}: the page needs the "
            f"network; for offline use pass --js_dir (or {JS_DIR_VARIABLE}) an npm install's "
            "node_modules"
        )
    else:
        where = f"transformers.js {library.version} copied from {library.source}: works offline"
    print(f"static playground: {', '.join(names)}; {where}", flush=True)
    print(f"serve it with: python -m http.server -d {site}", flush=True)
    return index
