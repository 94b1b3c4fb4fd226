"""The synthetic check of Theorem 1 (paper Appendix C) on random HMM mixtures."""
