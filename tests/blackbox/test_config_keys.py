"""One source of truth for the configuration: the table in
server/base/config.c, printed by `cmsd --config-keys`. README's settings
table ("Configuration reference") names exactly those keys, with the same
defaults; etc/cmsd.conf.example sets exactly those keys, docker/cmsd.conf
none other. A key added to the table but not documented, documented but not
a key, or a default changed on one side only fails here."""

import re
import subprocess

import helpers as h

README = h.ROOT / "README.md"
EXAMPLE = h.ROOT / "etc" / "cmsd.conf.example"
DOCKER_CONF = h.ROOT / "docker" / "cmsd.conf"


def printed_keys():
    """{name: (type, default, accepted, meaning)} from cmsd --config-keys."""
    p = subprocess.run([str(h.CMSD), "--config-keys"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60, env=h.cmsd_env(),
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split()[:4] == ["key", "type", "default", "accepted"], lines[0]
    keys = {}
    for ln in lines[1:]:
        parts = ln.split(None, 4)
        assert len(parts) == 5, "not key/type/default/accepted/meaning: %r" % ln
        name, typ, default, accepted, meaning = parts
        assert name not in keys, "%s printed twice" % name
        keys[name] = (typ, default, accepted, meaning)
    return keys


def readme_table():
    """{key: default} from README's settings table, defaults written the way
    --config-keys prints them ("(required)", '""', the value)."""
    text = README.read_text()
    start = text.index("## Configuration reference")
    end = text.index("\n## ", start + 1)
    rows = {}
    for ln in text[start:end].splitlines():
        m = re.match(r"^\|\s*`([a-z0-9_]+)`\s*\|\s*([^|]*?)\s*\|", ln)
        if not m:
            continue
        key, default = m.group(1), m.group(2)
        assert key not in rows, "README lists %s twice" % key
        if default == "*required*":
            default = "(required)"
        else:
            d = re.fullmatch(r"`([^`]*)`", default)
            assert d, "README's default of %s is not `value` or *required*: %r" % (key, default)
            default = d.group(1)
        rows[key] = default
    assert rows, "no settings table found in README's Configuration reference"
    return rows


def test_readme_names_every_key_with_its_default():
    keys = printed_keys()
    readme = readme_table()
    missing = sorted(set(keys) - set(readme))
    extra = sorted(set(readme) - set(keys))
    assert not missing, "keys missing from README's settings table: %s" % missing
    assert not extra, "README documents keys cmsd does not have: %s" % extra
    wrong = ["%s: README %s, cmsd %s" % (k, readme[k], keys[k][1])
             for k in keys if readme[k] != keys[k][1]]
    assert not wrong, "README's defaults differ from the table's:\n" + "\n".join(wrong)


def keys_set_in(path):
    found = set()
    for ln in path.read_text().splitlines():
        m = re.match(r"^\s*([a-z0-9_]+)\s*=", ln)
        if m:
            found.add(m.group(1))
    return found


def test_example_config_sets_every_key():
    keys = printed_keys()
    example = keys_set_in(EXAMPLE)
    assert not set(keys) - example, "keys missing from %s: %s" % (
        EXAMPLE, sorted(set(keys) - example))
    assert not example - set(keys), "%s sets keys cmsd does not have: %s" % (
        EXAMPLE, sorted(example - set(keys)))


def test_docker_config_sets_only_keys():
    unknown = keys_set_in(DOCKER_CONF) - set(printed_keys())
    assert not unknown, "%s sets keys cmsd does not have: %s" % (DOCKER_CONF, sorted(unknown))


def test_printed_table_is_what_cmsd_accepts(tmp_path):
    """Each printed key is accepted by the parser with its printed default,
    and a uint just outside its printed range is refused naming that range."""
    keys = printed_keys()
    lines = []
    for name, (typ, default, accepted, _) in keys.items():
        if default == "(required)":
            continue
        lines.append("%s = %s" % (name, '""' if default == '""' else default))
    path = tmp_path / "defaults.conf"
    path.write_text("\n".join(lines) + "\n")
    p = subprocess.run([str(h.CMSD), "--check-config", str(path)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60, env=h.cmsd_env(),
                       stdin=subprocess.DEVNULL)
    # Every default parses; the first complaint is the first required key.
    assert p.returncode == 1, p.stdout
    assert "tls_cert is required" in p.stdout, p.stdout
    for name, (typ, default, accepted, _) in keys.items():
        if typ != "uint":
            continue
        lo, hi = map(int, accepted.split(".."))
        path.write_text("%s = %d\n" % (name, hi + 1))
        p = subprocess.run([str(h.CMSD), "--check-config", str(path)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60, env=h.cmsd_env(),
                           stdin=subprocess.DEVNULL)
        assert p.returncode == 1 and "%s must be an integer in [%d, %d]" % (name, lo, hi) \
            in p.stdout, p.stdout


def test_help_mentions_config_keys():
    p = subprocess.run([str(h.CMSD), "--help"], stdout=subprocess.PIPE, text=True, timeout=60,
                       env=h.cmsd_env(), stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and "--config-keys" in p.stdout, p.stdout
