"""Federated training across branches with Flower: adapters travel, dialogues stay home.

Each branch runs a Flower ClientApp that trains the LoRA adapters and heads of the intent and NER models
on its own dialogues and sends back only those float tensors and scalar metrics; the ServerApp
aggregates them (FedAvg, FedProx or FedAdam), evaluates per branch and globally every round, logs
each round to MLflow, and registers the result as an NLU bundle that goes through `findial eval` /
`findial promote` like a centrally trained one.

    config.py       the Hydra `fed` config (configs/fed.yaml + configs/federated/); what a branch accepts from
                    the server's run config and what it owns (privacy, data) in deployment
    partition.py    which branch a node is and its dialogues
    models.py       the two task models and the ArrayRecord of their trainable tensors
    local.py        local training (Lightning) and scoring (findial eval metrics)
    privacy.py      DP modes (Flower's clipping/noise mods and wrappers), the privacy budget, SecAgg+ status
    strategies.py   FedAvg / FedProx / FedAdam from the config, metric aggregation
    client_app.py   the ClientApp (a branch)
    rounds.py       the server's round loop: bytes, participants, drop-outs, minimum replies
    server_app.py   the ServerApp: tracking, global evaluation, publishing
    publish.py      packages, bundle, registry version tags
    simulation.py   `findial fed simulate`: Flower's simulation runtime on Ray
    command.py      the `findial fed` command
    deploy.py       helpers of scripts/fed_deploy.sh (real SuperLink + SuperNodes, TLS, node auth)
"""
