"""Rules: which MambaLRP rules are switched on for one explanation."""

from __future__ import annotations

from dataclasses import dataclass, field

from captum_mamba.rules.linear import LRP0, LinearRule


@dataclass(frozen=True)
class MambaRules:
    r"""Selection of the MambaLRP propagation rules.

    All rules on (the default) is MambaLRP; all off is Gradient x Input on the
    unmodified model. Each flag can be switched for ablations.

    Args:
        norm (bool, optional): LN-rule, ``1 / rms(x)`` of every RMSNorm/LayerNorm is
            constant. Default: True.
        silu (bool, optional): identity rule, ``sigmoid(x)`` of the SiLU after the
            causal conv and on the gate branch is constant. Default: True.
        ssm (bool, optional): SSM rule, ``exp(dt A)``, ``dt B`` and ``C`` are constant,
            relevance flows through the scan input only. Default: True.
        gate (bool, optional): half rule on the multiplicative gate
            ``y * silu(z)``. Default: True.
        linear (LinearRule, optional): rule for linear and conv layers.
            Default: :class:`LRP0`.

    Examples::

        >>> MambaRules()                       # MambaLRP
        >>> MambaRules.gradient_x_input()      # all rules off
        >>> MambaRules.norm_only()             # "LRP (LN-rule only)" baseline
        >>> MambaRules(gate=False)             # ablation without the half rule
    """

    norm: bool = True
    silu: bool = True
    ssm: bool = True
    gate: bool = True
    linear: LinearRule = field(default_factory=LRP0)

    @classmethod
    def gradient_x_input(cls) -> MambaRules:
        """All rules off: Gradient x Input on the unmodified model."""
        return cls(norm=False, silu=False, ssm=False, gate=False)

    @classmethod
    def norm_only(cls) -> MambaRules:
        """Only the LN-rule: the "LRP (LN-rule only)" baseline of the MambaLRP paper."""
        return cls(norm=True, silu=False, ssm=False, gate=False)
