"""Analysis of trained models: factors, disentanglement, downstream models.

Modules are imported explicitly, e.g.
`from factorecg_jax.analysis import disentanglement`:

* `disentanglement`: MIG, DCI, SAP, modularity, explicitness, active units
  and Gaussian total correlation from (codes, factors) arrays;
* `interventions`: BetaVAE and FactorVAE scores against a generator such as
  the simulator;
* `interpretation`: Spearman associations of codes with factors and ECG
  measurements, automatic factor names, heatmaps;
* `disentanglement_report`: `evaluate_run`, all of the above written to a
  run directory.
"""
