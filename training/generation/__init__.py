"""Response generation: LoRA fine-tuning of a causal LM on the agent turns of the corpus.

- ``backbones``  causal-LM backbones (SmolLM2 and Gemma 3 from GGUF packages, local, tiny)
- ``prompts``    chat prompts from dialogue context, intent and state; loss on response tokens only
- ``data``       agent turns as examples; the DataModule
- ``module``     the Lightning module (LoRA, lean checkpoints)
- ``train``      ``train_response(cfg, task, out_dir)`` (``findial train task=response``)
- ``package``    response-model packages
- ``rules``      compliance rules (forbidden promises) checked on every reply
- ``responder``  ``Responder(package_dir, device).respond(history, intent, state)``

Scoring lives beside the NLU evaluation: ``findial.evaluation.responses`` (``evaluate_responses``,
``evaluate_response_model``; ``findial eval task=response`` records the metrics on a registered version).
"""
