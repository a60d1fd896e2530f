"""Engine: one run assembled from the config and the plugins, and its round loop.

``assembly`` (config -> bank, federation, PEFT, method) -> ``simulate`` (``RoundState``: stage 1 in
``client``/``local``, ``aggregate``, stage 2 in ``personalize``, evaluation with ``metrics``,
``analysis``), run concurrently by ``workers``; ``lora_tower``/``prompt_tower`` run the frozen towers
for the PEFTs; ``preflight``, ``resources`` and ``finite`` check before and during a run;
``checkpoint``, ``results`` and ``outlock`` are what it leaves behind; ``compare`` tabulates methods.
"""
