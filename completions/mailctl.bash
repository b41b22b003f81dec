# bash completion for mailctl, generated from the commands' own definitions
# (scripts/gen_docs.py; `mailctl completion show --shell bash` prints the same).
# Static: a Tab starts no Python. Profile names come from the [profiles.NAME] headers of
# the profiles file mailctl would use: --config on the line, $MAILCTL_CONFIG, the user
# file ($MAILCTL_HOME/profiles.toml or ~/.config/mailctl/profiles.toml), the system file
# ($MAILCTL_SYSTEM_CONFIG or /etc/mailctl/profiles.toml).

_mailctl_subcommands() {  # $1: command path -> REPLY: its subcommands
    case $1 in
        '') REPLY='profile settings test auth dns queue send sendmail config completion' ;;
        'profile') REPLY='add edit show list duplicate delete set-default rename lint import export discover failback' ;;
        'settings') REPLY='show set unset' ;;
        'test') REPLY='connect send' ;;
        'auth') REPLY='login status logout token' ;;
        'dns') REPLY='check-spf check-dkim check-dmarc check' ;;
        'queue') REPLY='add flush worker list show stats migrate hold release retry delete purge' ;;
        'completion') REPLY='show install' ;;
        *) REPLY='' ;;
    esac
}

_mailctl_options() {  # $1: command path -> REPLY: its options
    case $1 in
        '') REPLY='--config -p --profile --json -v --verbose -q --quiet --version -h --help' ;;
        'profile') REPLY='-h --help' ;;
        'profile add') REPLY='--password-stdin --no-secret --default --guided --json --type --provider --inherits --host --port --security --auth --username --mailbox --from-address --from-match --sender-name --reply-to --signature --description --alternate-host --alternate-port --failover --proxy --tls-verify --no-tls-verify --ca-file --tls-fingerprint --allow-insecure-auth --no-allow-insecure-auth --ehlo-name --source-address --auth-mechanism --socket-path --timeout --tenant-id --client-id --cloud --authority --authorization-url --token-url --scopes --redirect-uri --oauth-provider --device-authorization-url --revocation-url --graph-endpoint --ews-url --autodiscover --no-autodiscover --save-to-sent-items --no-save-to-sent-items --maildir --rate-limit-per-minute --max-connections --secret-command -h --help' ;;
        'profile edit') REPLY='--unset --password-stdin --json --type --provider --inherits --host --port --security --auth --username --mailbox --from-address --from-match --sender-name --reply-to --signature --description --alternate-host --alternate-port --failover --proxy --tls-verify --no-tls-verify --ca-file --tls-fingerprint --allow-insecure-auth --no-allow-insecure-auth --ehlo-name --source-address --auth-mechanism --socket-path --timeout --tenant-id --client-id --cloud --authority --authorization-url --token-url --scopes --redirect-uri --oauth-provider --device-authorization-url --revocation-url --graph-endpoint --ews-url --autodiscover --no-autodiscover --save-to-sent-items --no-save-to-sent-items --maildir --rate-limit-per-minute --max-connections --secret-command -h --help' ;;
        'profile show') REPLY='--json -h --help' ;;
        'profile list') REPLY='--json -h --help' ;;
        'profile duplicate') REPLY='--password-stdin --no-secret --json -h --help' ;;
        'profile delete') REPLY='-y --yes --new-default --json -h --help' ;;
        'profile set-default') REPLY='--json -h --help' ;;
        'profile rename') REPLY='--json -h --help' ;;
        'profile lint') REPLY='--strict --json -h --help' ;;
        'profile import') REPLY='--msmtprc --prefix --skip-passwords --dry-run --json -h --help' ;;
        'profile export') REPLY='--format -h --help' ;;
        'profile discover') REPLY='--add --client-id -n --nameserver --timeout --ca-file --https-port --json -h --help' ;;
        'profile failback') REPLY='--json -h --help' ;;
        'settings') REPLY='-h --help' ;;
        'settings show') REPLY='--json -h --help' ;;
        'settings set') REPLY='--json -h --help' ;;
        'settings unset') REPLY='--json -h --help' ;;
        'test') REPLY='-h --help' ;;
        'test connect') REPLY='--quit-after --auth-mechanism --ehlo --source-address --transcript --json -h --help' ;;
        'test send') REPLY='--to --from --subject --body --attach --header --data --quit-after --auth-mechanism --ehlo --source-address --transcript --json -h --help' ;;
        'auth') REPLY='-h --help' ;;
        'auth login') REPLY='--flow --no-wait --redirect-url --port --timeout --client-secret-stdin --service-account-key --json -h --help' ;;
        'auth status') REPLY='--no-check --check --json -h --help' ;;
        'auth logout') REPLY='--local-only --json -h --help' ;;
        'auth token') REPLY='--force-refresh --no-check -h --help' ;;
        'dns') REPLY='-h --help' ;;
        'dns check-spf') REPLY='--ip --sender --helo -n --nameserver --timeout --junit --strict --json -h --help' ;;
        'dns check-dkim') REPLY='-s --selector -n --nameserver --timeout --junit --strict --json -h --help' ;;
        'dns check-dmarc') REPLY='-n --nameserver --timeout --junit --strict --json -h --help' ;;
        'dns check') REPLY='-p --profile --ip --sender -s --selector --checks --skip --smtp --smtp-port --ca-file --connect-timeout --dnssec-resolver --helo -n --nameserver --timeout --junit --strict --json -h --help' ;;
        'queue') REPLY='-h --help' ;;
        'queue add') REPLY='-f --from --to --hold --outbox --json -h --help' ;;
        'queue flush') REPLY='-p --profile --limit --dry-run --lease --connections --outbox --json -h --help' ;;
        'queue worker') REPLY='--interval -p --profile --concurrency --connections --hold-backlog --no-hold-backlog --lease --log-format --outbox -h --help' ;;
        'queue list') REPLY='-s --state -p --profile --limit --all --outbox --json -h --help' ;;
        'queue show') REPLY='--raw --outbox --json -h --help' ;;
        'queue stats') REPLY='--top --format -o --output --outbox --json -h --help' ;;
        'queue migrate') REPLY='--to --outbox --json -h --help' ;;
        'queue hold') REPLY='--all --outbox --json -h --help' ;;
        'queue release') REPLY='--all --outbox --json -h --help' ;;
        'queue retry') REPLY='--all --outbox --json -h --help' ;;
        'queue delete') REPLY='--all --outbox --json -h --help' ;;
        'queue purge') REPLY='--older-than -s --state --vacuum --no-vacuum --outbox --json -h --help' ;;
        'send') REPLY='-t --to --cc --bcc -s --subject -b --body -a --attach --from --reply-to --header --queue --draft --outbox --json -h --help' ;;
        'sendmail') REPLY='-h --help' ;;
        'config') REPLY='--outbox --json -h --help' ;;
        'completion') REPLY='-h --help' ;;
        'completion show') REPLY='--shell -h --help' ;;
        'completion install') REPLY='--shell --json -h --help' ;;
        *) REPLY='' ;;
    esac
}

_mailctl_option_values() {  # 'PATH|OPTION' -> REPLY: its values, @profile, @file, @value; '' for a flag
    case $1 in
        '|--config') REPLY='@file' ;;
        '|-p'|'|--profile') REPLY='@profile' ;;
        'profile add|--type') REPLY='smtp graph ews file gmail-api lmtp' ;;
        'profile add|--provider') REPLY='microsoft365 gmail custom' ;;
        'profile add|--inherits') REPLY='@profile' ;;
        'profile add|--host') REPLY='@value' ;;
        'profile add|--port') REPLY='@value' ;;
        'profile add|--security') REPLY='none starttls tls' ;;
        'profile add|--auth') REPLY='none password oauth client-credentials service-account' ;;
        'profile add|--username') REPLY='@value' ;;
        'profile add|--mailbox') REPLY='@value' ;;
        'profile add|--from-address') REPLY='@value' ;;
        'profile add|--from-match') REPLY='@value' ;;
        'profile add|--sender-name') REPLY='@value' ;;
        'profile add|--reply-to') REPLY='@value' ;;
        'profile add|--signature') REPLY='@value' ;;
        'profile add|--description') REPLY='@value' ;;
        'profile add|--alternate-host') REPLY='@value' ;;
        'profile add|--alternate-port') REPLY='@value' ;;
        'profile add|--failover') REPLY='per-connection sticky' ;;
        'profile add|--proxy') REPLY='@value' ;;
        'profile add|--ca-file') REPLY='@file' ;;
        'profile add|--tls-fingerprint') REPLY='@value' ;;
        'profile add|--ehlo-name') REPLY='@value' ;;
        'profile add|--source-address') REPLY='@value' ;;
        'profile add|--auth-mechanism') REPLY='@value' ;;
        'profile add|--socket-path') REPLY='@file' ;;
        'profile add|--timeout') REPLY='@value' ;;
        'profile add|--tenant-id') REPLY='@value' ;;
        'profile add|--client-id') REPLY='@value' ;;
        'profile add|--cloud') REPLY='global usgov usgov-dod china' ;;
        'profile add|--authority') REPLY='@value' ;;
        'profile add|--authorization-url') REPLY='@value' ;;
        'profile add|--token-url') REPLY='@value' ;;
        'profile add|--scopes') REPLY='@value' ;;
        'profile add|--redirect-uri') REPLY='@value' ;;
        'profile add|--oauth-provider') REPLY='microsoft google generic' ;;
        'profile add|--device-authorization-url') REPLY='@value' ;;
        'profile add|--revocation-url') REPLY='@value' ;;
        'profile add|--graph-endpoint') REPLY='@value' ;;
        'profile add|--ews-url') REPLY='@value' ;;
        'profile add|--maildir') REPLY='@file' ;;
        'profile add|--rate-limit-per-minute') REPLY='@value' ;;
        'profile add|--max-connections') REPLY='@value' ;;
        'profile add|--secret-command') REPLY='@value' ;;
        'profile edit|--unset') REPLY='type provider inherits host port security auth username mailbox from_address from_match sender_name reply_to signature description alternate_host alternate_port failover proxy tls_verify ca_file tls_fingerprint allow_insecure_auth ehlo_name source_address auth_mechanism socket_path timeout tenant_id client_id cloud authority authorization_url token_url scopes redirect_uri oauth_provider device_authorization_url revocation_url graph_endpoint ews_url autodiscover save_to_sent_items maildir rate_limit_per_minute max_connections secret_command' ;;
        'profile edit|--type') REPLY='smtp graph ews file gmail-api lmtp' ;;
        'profile edit|--provider') REPLY='microsoft365 gmail custom' ;;
        'profile edit|--inherits') REPLY='@profile' ;;
        'profile edit|--host') REPLY='@value' ;;
        'profile edit|--port') REPLY='@value' ;;
        'profile edit|--security') REPLY='none starttls tls' ;;
        'profile edit|--auth') REPLY='none password oauth client-credentials service-account' ;;
        'profile edit|--username') REPLY='@value' ;;
        'profile edit|--mailbox') REPLY='@value' ;;
        'profile edit|--from-address') REPLY='@value' ;;
        'profile edit|--from-match') REPLY='@value' ;;
        'profile edit|--sender-name') REPLY='@value' ;;
        'profile edit|--reply-to') REPLY='@value' ;;
        'profile edit|--signature') REPLY='@value' ;;
        'profile edit|--description') REPLY='@value' ;;
        'profile edit|--alternate-host') REPLY='@value' ;;
        'profile edit|--alternate-port') REPLY='@value' ;;
        'profile edit|--failover') REPLY='per-connection sticky' ;;
        'profile edit|--proxy') REPLY='@value' ;;
        'profile edit|--ca-file') REPLY='@file' ;;
        'profile edit|--tls-fingerprint') REPLY='@value' ;;
        'profile edit|--ehlo-name') REPLY='@value' ;;
        'profile edit|--source-address') REPLY='@value' ;;
        'profile edit|--auth-mechanism') REPLY='@value' ;;
        'profile edit|--socket-path') REPLY='@file' ;;
        'profile edit|--timeout') REPLY='@value' ;;
        'profile edit|--tenant-id') REPLY='@value' ;;
        'profile edit|--client-id') REPLY='@value' ;;
        'profile edit|--cloud') REPLY='global usgov usgov-dod china' ;;
        'profile edit|--authority') REPLY='@value' ;;
        'profile edit|--authorization-url') REPLY='@value' ;;
        'profile edit|--token-url') REPLY='@value' ;;
        'profile edit|--scopes') REPLY='@value' ;;
        'profile edit|--redirect-uri') REPLY='@value' ;;
        'profile edit|--oauth-provider') REPLY='microsoft google generic' ;;
        'profile edit|--device-authorization-url') REPLY='@value' ;;
        'profile edit|--revocation-url') REPLY='@value' ;;
        'profile edit|--graph-endpoint') REPLY='@value' ;;
        'profile edit|--ews-url') REPLY='@value' ;;
        'profile edit|--maildir') REPLY='@file' ;;
        'profile edit|--rate-limit-per-minute') REPLY='@value' ;;
        'profile edit|--max-connections') REPLY='@value' ;;
        'profile edit|--secret-command') REPLY='@value' ;;
        'profile delete|--new-default') REPLY='@profile' ;;
        'profile import|--msmtprc') REPLY='@file' ;;
        'profile import|--prefix') REPLY='@value' ;;
        'profile export|--format') REPLY='msmtp swaks env' ;;
        'profile discover|--add') REPLY='@value' ;;
        'profile discover|--client-id') REPLY='@value' ;;
        'profile discover|-n'|'profile discover|--nameserver') REPLY='@value' ;;
        'profile discover|--timeout') REPLY='@value' ;;
        'profile discover|--ca-file') REPLY='@file' ;;
        'profile discover|--https-port') REPLY='@value' ;;
        'test connect|--quit-after') REPLY='resolve connect tls banner ehlo starttls auth secret token' ;;
        'test connect|--auth-mechanism') REPLY='@value' ;;
        'test connect|--ehlo') REPLY='@value' ;;
        'test connect|--source-address') REPLY='@value' ;;
        'test send|--to') REPLY='@value' ;;
        'test send|--from') REPLY='@value' ;;
        'test send|--subject') REPLY='@value' ;;
        'test send|--body') REPLY='@value' ;;
        'test send|--attach') REPLY='@file' ;;
        'test send|--header') REPLY='@value' ;;
        'test send|--data') REPLY='@file' ;;
        'test send|--quit-after') REPLY='resolve connect tls banner ehlo starttls auth mail rcpt data secret token' ;;
        'test send|--auth-mechanism') REPLY='@value' ;;
        'test send|--ehlo') REPLY='@value' ;;
        'test send|--source-address') REPLY='@value' ;;
        'auth login|--flow') REPLY='@value' ;;
        'auth login|--redirect-url') REPLY='@value' ;;
        'auth login|--port') REPLY='@value' ;;
        'auth login|--timeout') REPLY='@value' ;;
        'auth login|--service-account-key') REPLY='@file' ;;
        'dns check-spf|--ip') REPLY='@value' ;;
        'dns check-spf|--sender') REPLY='@value' ;;
        'dns check-spf|--helo') REPLY='@value' ;;
        'dns check-spf|-n'|'dns check-spf|--nameserver') REPLY='@value' ;;
        'dns check-spf|--timeout') REPLY='@value' ;;
        'dns check-spf|--junit') REPLY='@file' ;;
        'dns check-dkim|-s'|'dns check-dkim|--selector') REPLY='@value' ;;
        'dns check-dkim|-n'|'dns check-dkim|--nameserver') REPLY='@value' ;;
        'dns check-dkim|--timeout') REPLY='@value' ;;
        'dns check-dkim|--junit') REPLY='@file' ;;
        'dns check-dmarc|-n'|'dns check-dmarc|--nameserver') REPLY='@value' ;;
        'dns check-dmarc|--timeout') REPLY='@value' ;;
        'dns check-dmarc|--junit') REPLY='@file' ;;
        'dns check|-p'|'dns check|--profile') REPLY='@value' ;;
        'dns check|--ip') REPLY='@value' ;;
        'dns check|--sender') REPLY='@value' ;;
        'dns check|-s'|'dns check|--selector') REPLY='@value' ;;
        'dns check|--checks') REPLY='@value' ;;
        'dns check|--skip') REPLY='@value' ;;
        'dns check|--smtp-port') REPLY='@value' ;;
        'dns check|--ca-file') REPLY='@file' ;;
        'dns check|--connect-timeout') REPLY='@value' ;;
        'dns check|--dnssec-resolver') REPLY='@value' ;;
        'dns check|--helo') REPLY='@value' ;;
        'dns check|-n'|'dns check|--nameserver') REPLY='@value' ;;
        'dns check|--timeout') REPLY='@value' ;;
        'dns check|--junit') REPLY='@file' ;;
        'queue add|-f'|'queue add|--from') REPLY='@value' ;;
        'queue add|--to') REPLY='@value' ;;
        'queue add|--outbox') REPLY='@file' ;;
        'queue flush|-p'|'queue flush|--profile') REPLY='@profile' ;;
        'queue flush|--limit') REPLY='@value' ;;
        'queue flush|--lease') REPLY='@value' ;;
        'queue flush|--connections') REPLY='@value' ;;
        'queue flush|--outbox') REPLY='@file' ;;
        'queue worker|--interval') REPLY='@value' ;;
        'queue worker|-p'|'queue worker|--profile') REPLY='@profile' ;;
        'queue worker|--concurrency') REPLY='@value' ;;
        'queue worker|--connections') REPLY='@value' ;;
        'queue worker|--lease') REPLY='@value' ;;
        'queue worker|--log-format') REPLY='text json' ;;
        'queue worker|--outbox') REPLY='@file' ;;
        'queue list|-s'|'queue list|--state') REPLY='queued sending sent deferred failed expired held' ;;
        'queue list|-p'|'queue list|--profile') REPLY='@profile' ;;
        'queue list|--limit') REPLY='@value' ;;
        'queue list|--outbox') REPLY='@file' ;;
        'queue show|--outbox') REPLY='@file' ;;
        'queue stats|--top') REPLY='@value' ;;
        'queue stats|--format') REPLY='table json openmetrics' ;;
        'queue stats|-o'|'queue stats|--output') REPLY='@file' ;;
        'queue stats|--outbox') REPLY='@file' ;;
        'queue migrate|--to') REPLY='@file' ;;
        'queue migrate|--outbox') REPLY='@file' ;;
        'queue hold|--outbox') REPLY='@file' ;;
        'queue release|--outbox') REPLY='@file' ;;
        'queue retry|--outbox') REPLY='@file' ;;
        'queue delete|--outbox') REPLY='@file' ;;
        'queue purge|--older-than') REPLY='@value' ;;
        'queue purge|-s'|'queue purge|--state') REPLY='sent failed expired' ;;
        'queue purge|--outbox') REPLY='@file' ;;
        'send|-t'|'send|--to') REPLY='@value' ;;
        'send|--cc') REPLY='@value' ;;
        'send|--bcc') REPLY='@value' ;;
        'send|-s'|'send|--subject') REPLY='@value' ;;
        'send|-b'|'send|--body') REPLY='@value' ;;
        'send|-a'|'send|--attach') REPLY='@file' ;;
        'send|--from') REPLY='@value' ;;
        'send|--reply-to') REPLY='@value' ;;
        'send|--header') REPLY='@value' ;;
        'send|--outbox') REPLY='@file' ;;
        'config|--outbox') REPLY='@file' ;;
        'completion show|--shell') REPLY='bash zsh fish' ;;
        'completion install|--shell') REPLY='bash zsh fish' ;;
        *) REPLY='' ;;
    esac
}

_mailctl_positional() {  # 'PATH|INDEX' -> REPLY: what that argument completes to
    case $1 in
        'profile edit|0') REPLY='@profile' ;;
        'profile show|0') REPLY='@profile' ;;
        'profile duplicate|0') REPLY='@profile' ;;
        'profile delete|0') REPLY='@profile' ;;
        'profile set-default|0') REPLY='@profile' ;;
        'profile rename|0') REPLY='@profile' ;;
        'profile lint|'*) REPLY='@profile' ;;
        'profile export|0') REPLY='@profile' ;;
        'profile failback|0') REPLY='@profile' ;;
        'settings set|0') REPLY='sending_enabled max_retry_age retention_days rate_limit_per_minute batch_interval batch_size min_backoff max_backoff postmaster force_postmaster outbox hold_backlog_at_start attempt_log' ;;
        'settings unset|0') REPLY='sending_enabled max_retry_age retention_days rate_limit_per_minute batch_interval batch_size min_backoff max_backoff postmaster force_postmaster outbox hold_backlog_at_start attempt_log' ;;
        'test connect|0') REPLY='@profile' ;;
        'test send|0') REPLY='@profile' ;;
        'auth login|0') REPLY='@profile' ;;
        'auth status|0') REPLY='@profile' ;;
        'auth logout|0') REPLY='@profile' ;;
        'auth token|0') REPLY='@profile' ;;
        'queue add|0') REPLY='@profile' ;;
        'send|0') REPLY='@profile' ;;
        *) REPLY='' ;;
    esac
}

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
        if [[ $line =~ $re ]]; then REPLY+="${BASH_REMATCH[2]}${BASH_REMATCH[3]} "; fi
    done < "$file"
}

_mailctl() {
    local cur=${COMP_WORDS[COMP_CWORD]} cmdpath='' npos=0 config='' prev='' kind='' i w value=0 REPLY
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
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
    fi
    case $REPLY in
        @profile) _mailctl_profile_names "$config"; COMPREPLY=($(compgen -W "$REPLY" -- "$cur")) ;;
        @file) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur")) ;;
        @value|'') COMPREPLY=() ;;
        *) COMPREPLY=($(compgen -W "$REPLY" -- "$cur")) ;;
    esac
}

complete -F _mailctl mailctl
