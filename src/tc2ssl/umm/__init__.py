"""UMM, the Undoing Memorization Mechanism (Qiang, Song et al., "On the Generalization and Causal Explanation in
Self-Supervised Learning"): fine-tune the late layers of a pretrained SSL encoder, early layers frozen, by a
bi-level objective that maximises the coding rate reduction of the last-layer output. See docs/umm.md.

Modules: ``objectives`` (the inner JS and outer ΔR objectives), ``bilevel`` (one DARTS bi-level step through the
functional engine), ``config`` (``plugin.umm.*``; import-light, it is
imported by ``tc2ssl.config``). The plug-in is ``tc2ssl.plugins.umm``.
"""
