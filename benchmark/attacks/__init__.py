"""Membership inference attacks: input representations (`features`), per-image statistics (`statistics`),
network-free threshold attacks (`threshold`) and the paper's shadow-model patch attack (`network`,
`patch_attack`). Score convention everywhere: higher = more likely a member."""
