"""Static shell completion scripts for bash, zsh and fish, made from the command tree
(mailctl.commands.reference). A Tab runs no Python: commands, options and their values are
written into the script; profile names, the one dynamic value, are read by a small shell
function from the `[profiles.NAME]` headers of the profiles file mailctl would use, in the
order of mailctl.paths.find_config (--config on the line, $MAILCTL_CONFIG, the user file,
the system file).

scripts/gen_docs.py writes them to completions/; `mailctl completion show / install` renders
the same from the installed commands."""

from __future__ import annotations

from typing import Any, Callable

from mailctl.commands.reference import FILE, PROFILE, Command, command_tree

SHELLS = ("bash", "zsh", "fish")
FILE_NAMES = {"bash": "mailctl.bash", "zsh": "_mailctl", "fish": "mailctl.fish"}
ANY_VALUE = "@value"  # an option that takes a value with nothing to offer

HEADER = """\
{comment} {shell} completion for mailctl, generated from the commands' own definitions
{comment} (scripts/gen_docs.py; `mailctl completion show --shell {shell}` prints the same).
{comment} Static: a Tab starts no Python. Profile names come from the [profiles.NAME] headers of
{comment} the profiles file mailctl would use: --config on the line, $MAILCTL_CONFIG, the user
{comment} file ($MAILCTL_HOME/profiles.toml or ~/.config/mailctl/profiles.toml), the system file
{comment} ($MAILCTL_SYSTEM_CONFIG or /etc/mailctl/profiles.toml).
"""


def render(root: Any, shell: str) -> str:
    """The completion script for `shell` from the Click command `root`."""
    tree = command_tree(root)
    renderers: dict[str, Callable[[list[Command]], str]] = {"bash": _bash, "zsh": _zsh, "fish": _fish}
    return renderers[shell](tree)


def _spec(values: tuple[str, ...]) -> str:
    return " ".join(values) if values else ANY_VALUE


# --- bash and zsh share the data functions (case statements) -------------------------------
def _sq(text: str) -> str:
    """Single-quoted for bash and zsh."""
    return "'" + text.replace("'", "'\\''") + "'"


def _case_function(name: str, doc: str, rows: list[tuple[list[str], str]], var: str = "REPLY") -> str:
    lines = [f"{name}() {{  # {doc}", "    case $1 in"]
    for patterns, value in rows:
        lines.append(f"        {'|'.join(patterns)}) {var}={value} ;;")
    empty = "()" if var == "reply" else "''"
    lines += [f"        *) {var}={empty} ;;", "    esac", "}"]
    return "\n".join(lines)


def _data_functions(tree: list[Command]) -> str:
    subs = [([_sq(c.key)], _sq(" ".join(c.subcommands))) for c in tree if c.subcommands]
    opts = [([_sq(c.key)], _sq(" ".join(n for o in c.options for n in o.names))) for c in tree]
    values = [([_sq(f"{c.key}|{n}") for n in o.names], _sq(_spec(o.values))) for c in tree for o in c.options if o.takes_value]
    positional = []
    for c in tree:
        for i, p in enumerate(c.positionals):
            if p.values:
                pattern = _sq(f"{c.key}|") + "*" if p.many else _sq(f"{c.key}|{i}")
                positional.append(([pattern], _sq(" ".join(p.values))))
    return "\n\n".join([
        _case_function("_mailctl_subcommands", "$1: command path -> REPLY: its subcommands", subs),
        _case_function("_mailctl_options", "$1: command path -> REPLY: its options", opts),
        _case_function("_mailctl_option_values", "'PATH|OPTION' -> REPLY: its values, @profile, @file, @value; '' for a flag", values),
        _case_function("_mailctl_positional", "'PATH|INDEX' -> REPLY: what that argument completes to", positional),
    ])


PROFILE_LOOKUP_SH = r"""
_mailctl_profile_names() {  # $1: --config from the line -> REPLY: the profile names
    local file=$1 system='' line
    local re='^[[:space:]]*\[[[:space:]]*profiles[[:space:]]*\.[[:space:]]*("([^"]*)"|([A-Za-z0-9_-]+))[[:space:]]*\]'
    [[ -n $file ]] || file=${MAILCTL_CONFIG-}
    if [[ -z $file ]]; then
        if [[ -n ${MAILCTL_HOME-} ]]; then file=${MAILCTL_HOME%/}/profiles.toml
        elif [[ $OSTYPE == darwin* ]]; then file="$HOME/Library/Application Support/mailctl/profiles.toml"
        else file=${XDG_CONFIG_HOME:-$HOME/.config}/mailctl/profiles.toml
        fi
        file=${file/#\~/$HOME}
        if [[ ! -e $file && ! -L $file ]]; then
            if [[ -n ${MAILCTL_SYSTEM_CONFIG+set} ]]; then system=$MAILCTL_SYSTEM_CONFIG
            elif [[ -n ${MAILCTL_HOME-} ]]; then system=''
            elif [[ $OSTYPE == darwin* ]]; then system='/Library/Application Support/mailctl/profiles.toml'
            else system=/etc/mailctl/profiles.toml
            fi
            system=${system/#\~/$HOME}
            if [[ -n $system ]] && [[ -e $system || -L $system ]]; then file=$system; fi
        fi
    fi
    file=${file/#\~/$HOME}
    REPLY=''
    [[ -r $file ]] || return 0
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line =~ $re ]]; then REPLY+="${MATCH_2}${MATCH_3} "; fi
    done < "$file"
}
"""

WALK_SH = r"""
    for ((i = FIRST; i < LAST; i++)); do
        w=${WORDS[i]}
        if ((value)); then
            value=0
            [[ $prev == --config && -z $cmdpath ]] && config=$w
            continue
        fi
        prev=$w
        case $w in
            -*)
                _mailctl_option_values "$cmdpath|$w"
                [[ -n $REPLY ]] && value=1
                continue ;;
        esac
        _mailctl_subcommands "$cmdpath"
        if [[ " $REPLY " == *" $w "* ]]; then cmdpath=${cmdpath:+$cmdpath }$w; npos=0; else ((npos++)); fi
    done
    if ((value)); then
        _mailctl_option_values "$cmdpath|$prev"
    elif [[ $cur == -* ]]; then
        _mailctl_options "$cmdpath"
        kind=options
    else
        _mailctl_subcommands "$cmdpath"
        if [[ -n $REPLY ]]; then kind=commands; else _mailctl_positional "$cmdpath|$npos"; fi
    fi"""

BASH_DRIVER = r"""
_mailctl() {
    local cur=${COMP_WORDS[COMP_CWORD]} cmdpath='' npos=0 config='' prev='' kind='' i w value=0 REPLY
WALK
    case $REPLY in
        @profile) _mailctl_profile_names "$config"; COMPREPLY=($(compgen -W "$REPLY" -- "$cur")) ;;
        @file) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur")) ;;
        @value|'') COMPREPLY=() ;;
        *) COMPREPLY=($(compgen -W "$REPLY" -- "$cur")) ;;
    esac
}

complete -F _mailctl mailctl
"""


def _bash(tree: list[Command]) -> str:
    walk = WALK_SH.replace("FIRST", "1").replace("LAST", "COMP_CWORD").replace("WORDS", "COMP_WORDS")
    lookup = PROFILE_LOOKUP_SH.replace("MATCH_2", "BASH_REMATCH[2]").replace("MATCH_3", "BASH_REMATCH[3]")
    body = [HEADER.format(comment="#", shell="bash"), _data_functions(tree), lookup.strip("\n"),
            BASH_DRIVER.replace("WALK", walk.strip("\n")).strip("\n")]
    return "\n\n".join(part.rstrip("\n") for part in body) + "\n"


# --- zsh: the same walk, with descriptions -------------------------------------------------
def _described(tree: list[Command]) -> str:
    def items(pairs: list[tuple[str, str]]) -> str:
        return "(" + " ".join(_sq(f"{n.replace(':', chr(92) + ':')}:{h}") for n, h in pairs) + ")"

    by_key = {c.key: c for c in tree}
    subs = [([_sq(c.key)], items([(s, by_key[" ".join(c.path + (s,))].help) for s in c.subcommands])) for c in tree if c.subcommands]
    opts = [([_sq(c.key)], items([(n, o.help) for o in c.options for n in o.names])) for c in tree]
    return "\n\n".join([
        _case_function("_mailctl_subcommand_help", "$1: command path -> reply: 'name:help' of its subcommands", subs, "reply"),
        _case_function("_mailctl_option_help", "$1: command path -> reply: 'option:help' of its options", opts, "reply"),
    ])


ZSH_DRIVER = r"""
_mailctl() {
    emulate -L zsh
    local cur=${words[CURRENT]} cmdpath='' npos=0 config='' prev='' kind='' i w value=0 REPLY
    local -a reply
WALK
    case $kind in
        options) _mailctl_option_help "$cmdpath"; _describe -t options option reply; return ;;
        commands) _mailctl_subcommand_help "$cmdpath"; _describe -t commands command reply; return ;;
    esac
    case $REPLY in
        @profile) _mailctl_profile_names "$config"; compadd -- ${=REPLY} ;;
        @file) _files ;;
        @value|'') return 1 ;;
        *) compadd -- ${=REPLY} ;;
    esac
}

if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then
    _mailctl "$@"
else
    compdef _mailctl mailctl
fi
"""


def _zsh(tree: list[Command]) -> str:
    walk = WALK_SH.replace("FIRST", "2").replace("LAST", "CURRENT").replace("WORDS", "words")
    lookup = PROFILE_LOOKUP_SH.replace("MATCH_2", "match[2]").replace("MATCH_3", "match[3]")
    lookup = lookup.replace("local file=$1 system='' line", "emulate -L zsh\n    local file=$1 system='' line\n    local -a match mbegin mend")
    body = ["#compdef mailctl", HEADER.format(comment="#", shell="zsh"), _data_functions(tree), _described(tree),
            lookup.strip("\n"), ZSH_DRIVER.replace("WALK", walk.strip("\n")).strip("\n")]
    return "\n\n".join(part.rstrip("\n") for part in body) + "\n"


# --- fish ------------------------------------------------------------------------------------
def _fq(text: str) -> str:
    """Single-quoted for fish (backslash escapes only \\ and ')."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_switch(name: str, doc: str, rows: list[tuple[list[str], list[str]]]) -> str:
    lines = [f"function {name} --argument-names key  # {doc}", "    switch $key"]
    for patterns, outputs in rows:
        lines.append(f"        case {' '.join(patterns)}")
        lines += [f"            printf '%s\\n' {' '.join(outputs)}"]
    lines += ["    end", "end"]
    return "\n".join(lines)


def _fish_data(tree: list[Command]) -> str:
    by_key = {c.key: c for c in tree}

    def described(name: str, text: str) -> str:
        return _fq(name) + "\\t" + _fq(text) if text else _fq(name)  # fish: an unquoted \t is a tab

    def pattern(key: str) -> str:  # fish case patterns glob * and ?; no command has them
        return _fq(key)

    subs = [([pattern(c.key)], [described(s, by_key[" ".join(c.path + (s,))].help) for s in c.subcommands]) for c in tree if c.subcommands]
    opts = [([pattern(c.key)], [described(n, o.help) for o in c.options for n in o.names]) for c in tree if c.options]
    values = [([pattern(f"{c.key}|{n}") for n in o.names], [_fq(v) for v in (o.values or (ANY_VALUE,))])
              for c in tree for o in c.options if o.takes_value]
    positional = []
    for c in tree:
        for i, p in enumerate(c.positionals):
            if p.values:
                key = _fq(f"{c.key}|") + "'*'" if p.many else pattern(f"{c.key}|{i}")
                positional.append(([key], [_fq(v) for v in p.values]))
    return "\n\n".join([
        _fish_switch("__mailctl_subcommands", "command path -> 'name<TAB>help' of its subcommands", subs),
        _fish_switch("__mailctl_options", "command path -> 'option<TAB>help' of its options", opts),
        _fish_switch("__mailctl_option_values", "'PATH|OPTION' -> its values, @profile, @file, @value; nothing for a flag", values),
        _fish_switch("__mailctl_positional", "'PATH|INDEX' -> what that argument completes to", positional),
    ])


FISH_DRIVER = r"""
function __mailctl_profile_names --argument-names file  # the profile names in the profiles file
    test -n "$file"; or set file "$MAILCTL_CONFIG"
    if test -z "$file"
        set -l darwin (string match -q 'Darwin*' (uname -s); and echo 1)
        if test -n "$MAILCTL_HOME"
            set file (string replace -r '/$' '' -- $MAILCTL_HOME)/profiles.toml
        else if test -n "$darwin"
            set file "$HOME/Library/Application Support/mailctl/profiles.toml"
        else if test -n "$XDG_CONFIG_HOME"
            set file "$XDG_CONFIG_HOME/mailctl/profiles.toml"
        else
            set file "$HOME/.config/mailctl/profiles.toml"
        end
        set file (string replace -r '^~' -- "$HOME" "$file")
        if not test -e "$file"; and not test -L "$file"
            set -l system
            if set -q MAILCTL_SYSTEM_CONFIG
                set system "$MAILCTL_SYSTEM_CONFIG"
            else if test -n "$MAILCTL_HOME"
                set system ''
            else if test -n "$darwin"
                set system '/Library/Application Support/mailctl/profiles.toml'
            else
                set system /etc/mailctl/profiles.toml
            end
            set system (string replace -r '^~' -- "$HOME" "$system")
            if test -n "$system"; and begin; test -e "$system"; or test -L "$system"; end
                set file "$system"
            end
        end
    end
    set file (string replace -r '^~' -- "$HOME" "$file")
    test -r "$file"; or return 0
    string match -r -g '^\s*\[\s*profiles\s*\.\s*(?:"([^"]*)"|([A-Za-z0-9_-]+))\s*\]' <"$file"
end

function __mailctl_values --argument-names config cur  # then the spec: values, @profile, @file, @value
    set -l spec $argv
    set -e spec[1..2]
    switch "$spec[1]"
        case @profile
            __mailctl_profile_names "$config"
        case @file
            __fish_complete_path "$cur"
        case @value ''
        case '*'
            printf '%s\n' $spec
    end
end

function __mailctl_complete  # what the current token completes to
    set -l words (commandline -opc)
    set -e words[1]
    set -l cur (commandline -ct)
    set -l cmdpath ''
    set -l npos 0
    set -l config ''
    set -l prev ''
    set -l value 0
    for w in $words
        if test $value = 1
            set value 0
            test "$prev" = --config; and test -z "$cmdpath"; and set config $w
            continue
        end
        set prev $w
        if string match -q -- '-*' $w
            set -l takes (__mailctl_option_values "$cmdpath|$w")
            set -q takes[1]; and set value 1
            continue
        end
        set -l subs (__mailctl_subcommands "$cmdpath" | string replace -r '\t.*' '')
        if contains -- $w $subs
            set cmdpath (string trim -- "$cmdpath $w")
            set npos 0
        else
            set npos (math $npos + 1)
        end
    end
    if test $value = 1
        __mailctl_values "$config" "$cur" (__mailctl_option_values "$cmdpath|$prev")
    else if string match -q -- '-*' "$cur"
        __mailctl_options "$cmdpath"
    else
        set -l subs (__mailctl_subcommands "$cmdpath")
        if set -q subs[1]
            printf '%s\n' $subs
        else
            __mailctl_values "$config" "$cur" (__mailctl_positional "$cmdpath|$npos")
        end
    end
end

complete -e -c mailctl
complete -f -a '(__mailctl_complete)' -c mailctl
"""


def _fish(tree: list[Command]) -> str:
    body = [HEADER.format(comment="#", shell="fish"), _fish_data(tree), FISH_DRIVER.strip("\n")]
    return "\n\n".join(part.rstrip("\n") for part in body) + "\n"


def install_path(shell: str, env: dict[str, str] | None = None) -> str:
    """Where the shell looks for a user's completion script (no rc file to edit):
    bash-completion's user dir, a zsh site-functions dir under XDG_DATA_HOME (it must be in
    $fpath), fish's completions dir (autoloaded)."""
    import os

    env = dict(os.environ) if env is None else env
    home = env.get("HOME") or os.path.expanduser("~")
    data = env.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    if shell == "bash":
        base = env.get("BASH_COMPLETION_USER_DIR") or os.path.join(data, "bash-completion")
        return os.path.join(base, "completions", "mailctl")
    if shell == "zsh":
        return os.path.join(data, "zsh", "site-functions", "_mailctl")
    config = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    return os.path.join(config, "fish", "completions", "mailctl.fish")


def write_if_changed(path: str, text: str) -> bool:
    """Write `text` to `path` atomically unless it holds it already; True when written."""
    import os
    import tempfile

    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".mailctl-completion-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True
