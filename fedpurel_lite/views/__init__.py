"""Views: what a person looks at -- figures, explorers, the bias-transfer report, the course helpers.

``plots``/``plots_more`` (one ``palette``; ``figure_data``), the ipywidgets explorers ``widgets`` and
the app ``bias_app`` (with the precomputed grids of ``explore_grid``), ``report`` and
``report_figures``, and ``course`` (claims, quizzes and prompts of the notebook series).
"""
