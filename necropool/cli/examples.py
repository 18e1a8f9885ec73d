"""Examples of every command: the one source of the Examples section of ``--help`` and of
the EXAMPLES section of the man pages. Keys are command paths without ``necropool``
(``""`` is ``necropool`` itself); each value is shell text, one command per line, a ``#``
comment saying what a line does where that is not obvious."""

EXAMPLES = {
    "": 'necropool create web https://example.com/org/web.git --slots 4\n'
        'cd "$(necropool allocate web --owner alice --ttl 2h)"\n'
        'necropool release "$PWD"\n'
        'necropool run web -- make test\n'
        'necropool status',
    "create": "necropool create web https://example.com/org/web.git --slots 8 --branch main\n"
              "necropool create docs ~/src/docs -n 2 --keep-ignored",
    "delete": "necropool delete web\n"
              "necropool delete web --force   # even with slots allocated",
    "add": "necropool add web --count 4",
    "remove": "necropool remove web-4\n"
              "necropool remove web-4 --force   # even if allocated",
    "list": "necropool list\n"
            "necropool list --host ci-07       # a shared ledger's pools, on one host\n"
            "necropool list --json | jq -r '.pools[] | \"\\(.pool) \\(.counts.available)\"'",
    "status": "necropool status                 # every pool\n"
              "necropool status web-3           # one slot in detail\n"
              "necropool status web --format tsv --no-headers | cut -f1,2\n"
              "necropool status --format prometheus \\\n"
              "    --output /var/lib/node_exporter/necropool.prom\n"
              "necropool status web --json | jq -r '.slots[] | select(.state==\"allocated\") "
              "| .slot_id'",
    "sync": "necropool sync            # create or grow the pools of the config file\n"
            "necropool sync --prune    # also shrink them, and delete pools it dropped",
    "allocate": 'cd "$(necropool allocate web --owner ci --ttl 1h --meta job=42)"\n'
                "necropool allocate web --wait 5m --pid $$ --json\n"
                "necropool allocate web --any-host --json | jq -r '.slot_host, .path'",
    "release": 'necropool release web-3\n'
               'necropool release "$PWD" --lease-id "$lease"\n'
               'necropool release web-3 --force   # ends what the holder left running in it',
    "renew": 'necropool renew "$PWD" --lease-id "$NECROPOOL_LEASE_ID"    # by its own TTL\n'
             'necropool renew web-3 --lease-id "$lease" --ttl 2h',
    "run": "necropool run web -- make test\n"
           "necropool run web --wait 10m -- sh -c 'echo \"$NECROPOOL_SLOT_ID\"; make'",
    "log": "necropool log --tail 20          # the last events of every pool\n"
           "necropool log web --since 2h --event release\n"
           "necropool log --follow\n"
           "necropool log web --json | jq -c '.events[]'",
    "detect": "necropool detect\n"
              "necropool detect --json | jq .count",
    "recover": "necropool recover web-3\n"
               "necropool recover web-3 --force   # even if its holder may be alive",
    "isolate": 'necropool isolate web-3 --reason "disk errors"',
    "auto-recover": "necropool auto-recover --dry-run\n"
                    "* * * * * necropool auto-recover --json >>/var/log/necropool.json",
    "rescued": "necropool rescued list\n"
               "necropool rescued show web-1-20261201T101500\n"
               "necropool rescued restore web-1-20261201T101500 --into ~/src/web\n"
               "necropool rescued prune --older-than 30d --yes",
    "rescued list": "necropool rescued list\n"
                    "necropool rescued list web --json | jq '.total_bytes'",
    "rescued show": "necropool rescued show web-1-20261201T101500",
    "rescued restore": "necropool rescued restore web-1-20261201T101500   # a new clone, "
                       "./web-1-...\n"
                       "necropool rescued restore web-1-20261201T101500 --into ~/src/web",
    "rescued prune": "necropool rescued prune --older-than 30d          # only says what "
                     "would go\n"
                     "necropool rescued prune web --older-than 7d --yes",
    "ledger": "export NECROPOOL_LEDGER=postgresql://necropool@db.example.com/necropool\n"
              "necropool ledger init            # once, from any host\n"
              "necropool ledger import web      # on each host that has pool web\n"
              "necropool ledger status",
    "ledger init": "necropool --ledger postgresql://necropool@db.example.com/necropool "
                   "ledger init",
    "ledger migrate": "necropool ledger migrate   # after upgrading necropool",
    "ledger status": "necropool ledger status\n"
                     "necropool ledger status --json | jq '.pools[] | {pool, hosts}'",
    "ledger import": "necropool ledger import web",
    "ledger export": "necropool ledger export web   # back to the pool's state.toml",
    "completion": 'eval "$(necropool completion bash)"        # ~/.bashrc\n'
                  "necropool completion zsh > ~/.zfunc/_necropool  # a $fpath directory\n"
                  "necropool completion fish > ~/.config/fish/completions/necropool.fish",
}
