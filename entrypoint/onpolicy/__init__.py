"""On-policy rounds (DPO_ROUNDS, the RLAIF-V loop): sample answers from the current policy, judge them, pair them,
train a DPO round on the pairs, repeat. judge.py scores a sample, pairs.py turns scored samples into preference pairs
(RLAIF-V's length-balance filter), sample.py draws the samples, rounds.py runs the loop, spot-safe."""
