"""Check what the documentation site shows: the processed notebooks (`_proc/*.ipynb`, written by `nbdev.serve.proc_nbs`)
and README.md.

Fails (exit 1, one line per finding) on stored outputs that hold an error or a traceback, console or HTML progress-bar
frames, local paths (/tmp/, /work/, /home/), stray reprs (`[Text(`, `<matplotlib.`), `__main__.` (a notebook-defined
class in a signature), and on prose (markdown cells, README.md) that points to the project's internal files or process.
Each rule is checked against a small bad notebook first, so a rule that stops firing fails too.

`python .ci/docs_check.py` (after proc_nbs); `python .ci/docs_check.py DIR` to scan another folder of notebooks;
`--html OUT` also renders each notebook with `jupyter nbconvert --to html` into OUT (where nbconvert is installed), after
dropping the fields nbdev adds that are not in the notebook schema (`has_sd`, `metadata.execution`), and fails if one
does not convert.
"""
import json, re, shutil, subprocess, sys
from pathlib import Path

OUTPUT_RULES = [   # (name, pattern) on the text of stored outputs
    ('traceback', re.compile(r'Traceback \(most recent call last\)')),
    ('progress-bar frame', re.compile(r'\r(?!\n)|<progress[\s>]|\|[█-]{10,}\|')),
    ('local path', re.compile(r'(?<![\w.])/(tmp|work|home)/')),
    ('stray repr', re.compile(r'^\[?Text\(|\[Text\(|<matplotlib\.', re.M)),
    ('__main__. in a signature', re.compile(r'__main__\.')),
]
PROSE_RULES = [   # (name, pattern) on markdown cells and README.md
    ('internal file', re.compile(r'DESIGN\.md|\.\./shared', re.I)),
    ('process reference', re.compile(r'\bchangelog\b|\bthese machines\b', re.I)),
]

def _text(v): return ''.join(v) if isinstance(v, list) else str(v)

def output_texts(o:dict):
    "The text of one stored output: stream text, error name/value/traceback, and every str-valued mime bundle entry"
    if o.get('output_type') == 'error':
        yield 'error output', f"{o.get('ename')}: {o.get('evalue')}"
        yield None, _text(o.get('traceback', ''))
    if 'text' in o: yield None, _text(o['text'])
    for mime, v in (o.get('data') or {}).items():
        if mime.startswith('image/') and not mime.startswith('image/svg'): continue   # base64 pixels
        yield None, _text(v)

def check_nb(nb:dict, name:str) -> list:
    "Findings of one notebook, as 'NAME cell ID: rule: excerpt' lines"
    found = []
    for i, c in enumerate(nb.get('cells', [])):
        where = f"{name} cell {c.get('id', i)}"
        if c.get('cell_type') == 'markdown':
            src = _text(c.get('source', ''))
            for rule, pat in PROSE_RULES:
                if (m := pat.search(src)): found.append(f"{where}: {rule}: {m.group()!r}")
        for o in c.get('outputs', []):
            for forced, text in output_texts(o):
                if forced: found.append(f"{where}: {forced}: {text[:80]!r}")
                for rule, pat in OUTPUT_RULES:
                    if (m := pat.search(text)):
                        s = max(m.start() - 30, 0)
                        found.append(f"{where}: {rule}: {text[s:m.end() + 30]!r}")
    return found

def check_text(text:str, name:str) -> list:
    return [f"{name}: {rule}: {m.group()!r}" for rule, pat in PROSE_RULES if (m := pat.search(text))]

def self_test():
    "Every rule fires on a bad notebook and nothing fires on a clean one"
    def nb(*outputs, md=''):
        return {'cells': [{'cell_type': 'markdown', 'id': 'm', 'source': [md]},
                          {'cell_type': 'code', 'id': 'c', 'source': ['x'], 'outputs': list(outputs)}]}
    stream = lambda t: {'output_type': 'stream', 'name': 'stdout', 'text': [t]}
    result = lambda t, mime='text/plain': {'output_type': 'execute_result', 'data': {mime: [t]}, 'metadata': {}}
    bad = {
        'error output': nb({'output_type': 'error', 'ename': 'ValueError', 'evalue': 'x', 'traceback': ['...']}),
        'traceback': nb(stream('Traceback (most recent call last):\n  File "x.py"\n')),
        'progress-bar frame': nb(stream('Epoch 1/3 : |█████-----| 12.50% [1/8]\rEpoch 1/3 : |██████████| 25.00%')),
        'progress-bar frame ': nb(result('<progress value="3" max="8"></progress>', 'text/html')),
        'local path': nb(stream('checkpoints: /tmp/tmpw3f3a2ug/models/latest\n')),
        'local path ': nb(stream('/home/me/.venv/lib/python3.11/site-packages/torch/jit/_script.py:1491: FutureWarning\n')),
        'stray repr': nb(result("[Text(0.5, 1.0, 'Stage-1 schedule')]")),
        'stray repr ': nb(result('<matplotlib.image.AxesImage at 0x7f>')),
        '__main__. in a signature': nb(result('def f(x:__main__.Foo)', 'text/markdown')),
        'internal file': nb(md='as DESIGN.md says'),
        'process reference': nb(md='its figures are reported in the changelog'),
        'process reference ': nb(md='what these machines serve'),
    }
    for rule, b in bad.items():
        got = check_nb(b, 'bad')
        assert any(f": {rule.strip()}:" in g for g in got), (rule, got)
    good = nb(stream('epoch  train_loss\n0      5.68\n'), result('<Figure size 640x480 with 1 Axes>'),
              result('/tmp is where tempfile writes', 'text/x'), md='A figure of /tmp/-free outputs; see the docs.')
    good['cells'][1]['outputs'][2] = result('0.125 (chance 0.125)')
    assert check_nb(good, 'good') == [], check_nb(good, 'good')

def to_html(nbs:list, out:Path) -> list:
    "Render `nbs` with nbconvert into `out`; the names that failed, with nbconvert's last line"
    if shutil.which('jupyter') is None: sys.exit("FAIL: --html needs nbconvert (`jupyter nbconvert`), not installed here")
    out.mkdir(parents=True, exist_ok=True); failed = []
    for p in nbs:
        nb = json.loads(p.read_text())
        for c in nb.get('cells', []): c.pop('has_sd', None); c.get('metadata', {}).pop('execution', None)
        (out/p.name).write_text(json.dumps(nb))
        r = subprocess.run(['jupyter', 'nbconvert', '--to', 'html', str(out/p.name)], capture_output=True, text=True)
        if r.returncode or not (out/p.with_suffix('.html').name).exists():
            lines = r.stderr.strip().splitlines() or ['?']
            failed.append(f"{p.name}: nbconvert failed: {([l for l in lines if 'Error' in l or 'ERROR' in l] or lines)[-1][:200]}")
    return failed

if __name__ == '__main__':
    self_test()
    root = Path(__file__).resolve().parent.parent
    args = sys.argv[1:]
    html = Path(args.pop(args.index('--html') + 1)) if '--html' in args else None
    if html is not None: args.remove('--html')
    folder = Path(args[0]) if args else root/'_proc'
    nbs = sorted(folder.glob('*.ipynb'))
    if not nbs: sys.exit(f"FAIL: no notebooks in {folder} (run proc_nbs first)")
    found = [f for p in nbs for f in check_nb(json.loads(p.read_text()), p.name)]
    if (readme := root/'README.md').exists(): found += check_text(readme.read_text(), 'README.md')
    if html is not None: found += to_html(nbs, html)
    for f in found: print(f)
    if found: sys.exit(f"FAIL: {len(found)} findings in the docs ({len(nbs)} notebooks in {folder}, README.md)")
    print(f"docs check ok: {len(nbs)} notebooks in {folder.name}/ and README.md")
