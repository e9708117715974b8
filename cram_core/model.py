"""The crammed BERT encoder: every architecture ablation of ABLATIONS.md is a ``ModelConfig`` field.

Read top to bottom: each ablation axis is a registry dict (name -> layer class), placed right after the
layers it names; then the transformer block, the model, weight init and the FLOP count. Registries are
looked up once in ``__init__`` (an unknown name is a ``ValueError`` listing the valid ones); a disabled
sub-layer is ``nn.Identity()``, so ``forward`` has no string comparisons and no branches on tensor
values, which keeps it ``torch.compile``-friendly (static shapes, no graph breaks).

Shape letters: B batch, L sequence length, M predicted positions per sequence, H hidden size,
E embedding width, F ffn_size, V vocabulary, nh heads, hd head dimension.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from cram_core import rng
from cram_core.config import ModelConfig


def _lookup(registry: dict[str, Any], name: str, key: str) -> Any:
    if name not in registry:
        raise ValueError(f"{key}: unknown choice {name!r}; valid: {', '.join(registry)}")
    return registry[name]


# ---------------------------------------------------------------- activations and norms


class SquaredReLU(nn.Module):
    """relu(x)^2 (So et al., Primer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.square(F.relu(x))


ACTIVATIONS: dict[str, Any] = {
    "gelu": nn.GELU,
    "gelu-tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "leaky-relu": nn.LeakyReLU,
    "sqrelu": SquaredReLU,
}

# Both take (width, eps=...). LayerNorm keeps its bias: linear_bias is about linear layers only.
NORMS: dict[str, Any] = {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm}


class NormSlots(NamedTuple):
    """Where a residual branch x -> x + f(x) gets norms: on f's input, on f's output, after the sum."""

    branch_input: bool
    branch_output: bool
    after_sum: bool


NORM_SCHEMES: dict[str, NormSlots] = {
    "pre": NormSlots(branch_input=True, branch_output=False, after_sum=False),
    "post": NormSlots(branch_input=False, branch_output=False, after_sum=True),
    # Sandwich-LN (Ding et al., CogView): x + norm(f(norm(x))).
    "sandwich": NormSlots(branch_input=True, branch_output=True, after_sum=False),
}


class OutputLinear(nn.Linear):
    """A projection that writes into the residual stream; init=scaled shrinks exactly these."""


# ---------------------------------------------------------------- MLPs


class PlainMLP(nn.Module):
    def __init__(self, cfg: ModelConfig, activation: nn.Module) -> None:
        super().__init__()
        self.fc_in = nn.Linear(cfg.hidden_size, cfg.ffn_size, bias=cfg.linear_bias)
        self.act = activation
        self.fc_out = OutputLinear(cfg.ffn_size, cfg.hidden_size, bias=cfg.linear_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))  # [B,L,H] -> [B,L,F] -> [B,L,H]

    @staticmethod
    def forward_macs(cfg: ModelConfig, seq_len: int) -> int:
        return 2 * seq_len * cfg.hidden_size * cfg.ffn_size


class GatedMLP(nn.Module):
    """GLU whose ffn_size is split into value and gate halves, so it has fewer parameters than plain."""

    def __init__(self, cfg: ModelConfig, activation: nn.Module) -> None:
        super().__init__()
        self.fc_in = nn.Linear(cfg.hidden_size, cfg.ffn_size, bias=cfg.linear_bias)
        self.act = activation
        self.fc_out = OutputLinear(cfg.ffn_size // 2, cfg.hidden_size, bias=cfg.linear_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.fc_in(x).chunk(2, dim=-1)  # [B,L,F] -> 2 x [B,L,F/2]
        return self.fc_out(self.act(gate) * value)  # [B,L,H]

    @staticmethod
    def forward_macs(cfg: ModelConfig, seq_len: int) -> int:
        return seq_len * cfg.hidden_size * (cfg.ffn_size + cfg.ffn_size // 2)


MLPS: dict[str, Any] = {"plain": PlainMLP, "glu": GatedMLP}


# ---------------------------------------------------------------- position information
# A position module adds absolute positions to the embeddings (forward) and/or hands attention a
# rotation of q and k (rotation); each kind does one, the other is a no-op.


def sinusoid_table(num_positions: int, width: int) -> torch.Tensor:
    """[num_positions, width] with sin/cos pairs at geometric frequencies (Vaswani et al.)."""
    num_freqs = (width + 1) // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(num_freqs, dtype=torch.float32) * 2 / width)
    angles = torch.arange(num_positions, dtype=torch.float32)[:, None] * freqs  # [P, width/2]
    table = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # interleave -> [P, 2*ceil(w/2)]
    return table[:, :width]


class NoPositions(nn.Module):
    """position_embedding=none; also the base class: nothing added, nothing rotated."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return x

    def rotation(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None


class LearnedPositions(NoPositions):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.table = nn.Embedding(cfg.max_seq_len, cfg.hidden_size)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return x + self.table(position_ids)


class SinusoidalPositions(NoPositions):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        # Not persistent: it is a function of the config, so checkpoints need not carry it.
        self.register_buffer("table", sinusoid_table(cfg.max_seq_len, cfg.hidden_size), persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return x + F.embedding(position_ids, self.table)


class ScaledSinusoidalPositions(SinusoidalPositions):
    """Fixed sinusoid times one learned scalar, initialised to 1/sqrt(hidden) (Hua et al., FLASH)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.scale = nn.Parameter(torch.tensor(cfg.hidden_size**-0.5))

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return x + self.scale * F.embedding(position_ids, self.table)


class RotaryPositions(NoPositions):
    """Rotary embedding (Su et al., RoFormer), half-split layout; nothing is added to the embeddings."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        head_dim = cfg.hidden_size // cfg.num_heads
        inv_freq = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rotation(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = position_ids[:, None, :, None].float() * self.inv_freq  # [B,1,L,hd/2], fp32 under autocast
        return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)  # [B,nh,L,hd] -> 2 x [B,nh,L,hd/2]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


POSITIONS: dict[str, Any] = {
    "learned": LearnedPositions,
    "sinusoidal": SinusoidalPositions,
    "scaled-sinusoidal": ScaledSinusoidalPositions,
    "rotary": RotaryPositions,
    "none": NoPositions,
}


# ---------------------------------------------------------------- token mixing


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.attention_dropout = cfg.attention_dropout
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.qkv_bias)
        self.out = OutputLinear(cfg.hidden_size, cfg.hidden_size, bias=cfg.linear_bias)

    def forward(self, x: torch.Tensor, rope: tuple | None, key_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, H = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, H // self.num_heads).permute(2, 0, 3, 1, 4)
        # q, k, v: [B,nh,L,hd]
        if rope is not None:  # None or not is fixed per model, so compile sees one path
            q, k = rotate(q, *rope), rotate(k, *rope)
        dropout_p = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout_p)
        return self.out(y.transpose(1, 2).reshape(B, L, H))  # [B,nh,L,hd] -> [B,L,H]

    @staticmethod
    def forward_macs(cfg: ModelConfig, seq_len: int) -> int:
        projections = 4 * seq_len * cfg.hidden_size**2  # q, k, v, out
        return projections + 2 * seq_len**2 * cfg.hidden_size  # + QK^T and AV over all heads


class FourierMixing(nn.Module):
    """FNet (Lee-Thorp et al.): real part of a 2-D DFT over sequence and hidden; no parameters.

    The DFT runs in float32 because bf16 FFTs are unsupported or inaccurate. It mixes every position,
    so an attention mask cannot be honoured: padded inputs change real tokens' outputs (FNet pads to a
    fixed length for the same reason). qkv_bias and attention_dropout have nothing to act on here.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, rope: tuple | None, key_mask: torch.Tensor | None) -> torch.Tensor:
        return torch.fft.fft2(x.float(), dim=(-2, -1)).real.type_as(x)

    @staticmethod
    def forward_macs(cfg: ModelConfig, seq_len: int) -> int:
        # An FFT is ~5*L*H*log2(L*H) real FLOPs, under 1% of a block's MLP at crammed sizes; torch's
        # FLOP counter ignores FFTs too, so FLOP budgets treat the mixing as free.
        return 0


ATTENTIONS: dict[str, Any] = {"softmax": SelfAttention, "fourier": FourierMixing}


# ---------------------------------------------------------------- block


def has_mlp(cfg: ModelConfig, index: int) -> bool:
    """ffn_every=k: blocks k-1, 2k-1, ... keep their MLP (the last block of each group of k)."""
    return index % cfg.ffn_every == cfg.ffn_every - 1


class Residual(nn.Module):
    """x -> x + dropout(f(x)) with norms in the slots the scheme names (Identity elsewhere)."""

    def __init__(self, fn: nn.Module, slots: NormSlots, make_norm: Any, dropout: float) -> None:
        super().__init__()
        self.norm_in = make_norm() if slots.branch_input else nn.Identity()
        self.fn = fn
        self.norm_out = make_norm() if slots.branch_output else nn.Identity()
        self.norm_sum = make_norm() if slots.after_sum else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.stream_dtype: torch.dtype | None = None  # see CrammedBert.set_stream_dtype

    def forward(self, x: torch.Tensor, *fn_args: Any) -> torch.Tensor:
        y = self.norm_sum(x + self.norm_out(self.dropout(self.fn(self.norm_in(x), *fn_args))))
        # CUDA autocast runs norms in fp32, so norm_out or norm_sum would turn a bf16 stream back to fp32.
        return y if self.stream_dtype is None else y.to(self.stream_dtype)  # a python constant: one path


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int, parts: dict[str, Any]) -> None:
        super().__init__()
        slots, make_norm = parts["slots"], parts["norm"]
        self.mixer = Residual(parts["attention"](cfg), slots, make_norm, cfg.dropout)
        self.ffn = (
            Residual(parts["mlp"](cfg, parts["activation"]()), slots, make_norm, cfg.dropout)
            if has_mlp(cfg, index)
            else nn.Identity()
        )
        self.layer_drop = cfg.layer_drop

    def forward(self, x: torch.Tensor, rope: tuple | None, key_mask: torch.Tensor | None) -> torch.Tensor:
        y = self.ffn(self.mixer(x, rope, key_mask))
        if self.training and self.layer_drop > 0:  # python constants: no graph break
            # Stochastic depth (LayerDrop-style, no rescaling). A real skip would branch on a random
            # tensor, which compiled graphs cannot do; computing the block and selecting keeps the
            # semantics (and the global RNG makes it reproducible) but saves no compute.
            keep = torch.rand((), device=x.device) >= self.layer_drop
            y = torch.where(keep, y, x)
        return y


# ---------------------------------------------------------------- model


class Embeddings(nn.Module):
    """Token table of width E (ALBERT factorisation: then a linear E -> H), positions, norm, dropout."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, parts: dict[str, Any]) -> None:
        super().__init__()
        width = cfg.embedding_size or cfg.hidden_size
        self.token = nn.Embedding(vocab_size, width)
        factorised = width != cfg.hidden_size
        self.project = nn.Linear(width, cfg.hidden_size, bias=cfg.linear_bias) if factorised else nn.Identity()
        # Positions are added at hidden width, after the projection: factorising targets the vocabulary.
        self.positions = parts["positions"](cfg)
        self.norm = parts["norm"]() if cfg.embedding_norm else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        x = self.project(self.token(input_ids))  # [B,L] -> [B,L,E] -> [B,L,H]
        return self.dropout(self.norm(self.positions(x, position_ids)))


class MLMHead(nn.Module):
    """Optional BERT transform (dense + act + norm), then the decoder to vocabulary logits.

    Tied: the decoder matrix is the input token table, passed in at call time so it is stored once;
    with a factorised table (E < H) a linear H -> E comes first. Untied: an own [V,H] matrix.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int, parts: dict[str, Any]) -> None:
        super().__init__()
        H, width = cfg.hidden_size, cfg.embedding_size or cfg.hidden_size
        self.transform = (
            nn.Sequential(nn.Linear(H, H, bias=cfg.linear_bias), parts["activation"](), parts["norm"]())
            if cfg.head_transform
            else nn.Identity()
        )
        project = cfg.tie_embeddings and width != H
        self.to_embedding = nn.Linear(H, width, bias=cfg.linear_bias) if project else nn.Identity()
        self.weight = None if cfg.tie_embeddings else nn.Parameter(torch.empty(vocab_size, H))
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if cfg.decoder_bias else None

    def forward(self, h: torch.Tensor, token_table: torch.Tensor) -> torch.Tensor:
        weight = token_table if self.weight is None else self.weight
        return F.linear(self.to_embedding(self.transform(h)), weight, self.bias)  # [B,N,H] -> [B,N,V]


def _parts(cfg: ModelConfig) -> dict[str, Any]:
    """Resolve every registry name once; the layers receive classes/factories, never names."""
    norm_cls = _lookup(NORMS, cfg.norm, "model.norm")
    return {
        "norm": lambda: norm_cls(cfg.hidden_size, eps=cfg.norm_eps),
        "activation": _lookup(ACTIVATIONS, cfg.activation, "model.activation"),
        "mlp": _lookup(MLPS, cfg.mlp, "model.mlp"),
        "positions": _lookup(POSITIONS, cfg.position_embedding, "model.position_embedding"),
        "attention": _lookup(ATTENTIONS, cfg.attention, "model.attention"),
        "slots": _lookup(NORM_SCHEMES, cfg.norm_scheme, "model.norm_scheme"),
        "init": _lookup(INITS, cfg.init, "model.init"),
    }


class CrammedBert(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, seed: int = 0) -> None:
        super().__init__()
        parts = _parts(cfg)
        if parts["attention"] is FourierMixing and parts["positions"] is RotaryPositions:
            raise ValueError(
                "model.position_embedding=rotary rotates attention queries/keys, which attention=fourier "
                "does not have; pick another position_embedding"
            )
        self.cfg, self.vocab_size = cfg, vocab_size
        self.sparse_prediction = cfg.sparse_prediction
        self.stream_dtype: torch.dtype | None = None  # see set_stream_dtype
        # torch's default layer init draws random numbers that init_weights overwrites (from per-parameter
        # generators); forking the RNG keeps those draws off the caller's global stream (dropout).
        with torch.random.fork_rng(devices=[]):
            self.embeddings = Embeddings(cfg, vocab_size, parts)
            self.blocks = nn.ModuleList(Block(cfg, i, parts) for i in range(cfg.num_layers))
            # Applied whenever set, post-LN included (there it re-normalises the last block's output:
            # near-identity at init, but it adds a learned affine map).
            self.final_norm = parts["norm"]() if cfg.final_norm else nn.Identity()
            self.head = MLMHead(cfg, vocab_size, parts)
        init_weights(self, *parts["init"](cfg), seed=seed)

    def set_stream_dtype(self, dtype: torch.dtype | None) -> None:
        """impl.residual_dtype (hardware.apply_precision calls this). None: the stream between blocks has the
        dtype the layers return, fp32 under autocast as in HF BERT (lookups and norms are not bf16, and a
        residual add promotes). A dtype: the embeddings' output and every residual branch's output are cast
        to it, so under bf16 autocast the stream moves half the bytes, rounded to bf16 at every add."""
        for module in self.modules():
            if isinstance(module, (CrammedBert, Residual)):
                module.stream_dtype = dtype

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B,L,H]; attention_mask [B,L] is True at real tokens (keys elsewhere ignored)."""
        B, L = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(L, device=input_ids.device).expand(B, L)
        key_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # [B,1,1,L]
        x = self.embeddings(input_ids, position_ids)  # [B,L,H]
        if self.stream_dtype is not None:  # a python constant: compile sees one path
            x = x.to(self.stream_dtype)
        rope = self.embeddings.positions.rotation(position_ids)
        for block in self.blocks:
            x = block(x, rope, key_mask)
        return self.final_norm(x)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits [B,M,V] at ``positions`` [B,M] (indices into L)."""
        h = self.encode(input_ids, position_ids=position_ids)  # [B,L,H]
        table = self.embeddings.token.weight
        if self.sparse_prediction:  # a python bool fixed at build time
            h = torch.gather(h, 1, positions[:, :, None].expand(-1, -1, h.shape[-1]))  # [B,M,H]
            return self.head(h, table)  # [B,M,V]
        logits = self.head(h, table)  # [B,L,V]
        return torch.gather(logits, 1, positions[:, :, None].expand(-1, -1, logits.shape[-1]))  # [B,M,V]

    def num_params(self, non_embedding: bool = False) -> int:
        """Unique parameters; non_embedding leaves out token/learned-position tables and an untied decoder."""
        params = {id(p): p for p in self.parameters()}
        if non_embedding:
            tables = [m.weight for m in self.modules() if isinstance(m, nn.Embedding)] + [self.head.weight]
            for table in tables:
                params.pop(id(table), None)  # head.weight is None when tied: a no-op
        return sum(p.numel() for p in params.values())

    def flops_per_sequence(self, seq_len: int, num_predictions: int) -> float:
        return training_flops_per_sequence(self.cfg, self.vocab_size, seq_len, num_predictions)


def build_model(cfg: ModelConfig, vocab_size: int, seed: int = 0) -> CrammedBert:
    """``seed`` (train.seed) fixes the initial weights, parameter by parameter (see cram_core.rng)."""
    return CrammedBert(cfg, vocab_size, seed)


# ---------------------------------------------------------------- init
# Each scheme maps the config to (std of every matrix, std of the OutputLinear projections).


def _normal_init(cfg: ModelConfig) -> tuple[float, float]:
    return cfg.init_std, cfg.init_std


def _small_init(cfg: ModelConfig) -> tuple[float, float]:
    std = math.sqrt(2 / (5 * cfg.hidden_size))  # Nguyen & Salazar, "Transformers without tears"
    return std, std


def _scaled_init(cfg: ModelConfig) -> tuple[float, float]:
    # GPT-2: each block adds two projections to the residual stream, so its variance grows with 2*layers.
    return cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.num_layers)


INITS: dict[str, Any] = {"normal": _normal_init, "small": _small_init, "scaled": _scaled_init}


@torch.no_grad()
def init_weights(model: CrammedBert, std: float, output_std: float, seed: int = 0) -> None:
    """Matrices normal(0, std) (residual-stream outputs: output_std); biases 0; norm weights 1.

    Each matrix draws from its own generator, seeded by (seed, parameter name): a parameter with the same
    name and shape gets the same values in every config, whatever layers are added or removed around it
    (common random numbers across a sweep's variants). The scaled-sinusoid scalar keeps its own init.
    """
    def normal(name: str, weight: torch.Tensor, sd: float) -> None:
        nn.init.normal_(weight, std=sd, generator=rng.generator(seed, f"init:{name}", weight.device))

    for prefix, module in model.named_modules():
        name = f"{prefix}.weight" if prefix else "weight"
        if isinstance(module, nn.Linear):
            normal(name, module.weight, output_std if isinstance(module, OutputLinear) else std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            normal(name, module.weight, std)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:  # RMSNorm has no bias attribute
                nn.init.zeros_(module.bias)
        elif isinstance(module, MLMHead):
            if module.weight is not None:
                normal(name, module.weight, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


# ---------------------------------------------------------------- FLOP count


def training_flops_per_sequence(cfg: ModelConfig, vocab_size: int, seq_len: int, num_predictions: int) -> float:
    """Forward + backward matmul FLOPs of one sequence: 3 x forward, 2 FLOPs per multiply-add.

    Counted: embedding factorisation (E -> H), per block the token mixer (q/k/v/out projections and
    attention scores QK^T and AV; Fourier mixing counts 0, see FourierMixing) and the MLP where
    ffn_every keeps one, then the head transform and decoder on num_predictions positions with
    sparse_prediction, else on all seq_len. Not counted: lookups, norms, activations, softmax, rotary.
    Layer drop computes every block (see Block), so it changes nothing here.
    """
    L, H, V = seq_len, cfg.hidden_size, vocab_size
    E = cfg.embedding_size or H
    mixer = _lookup(ATTENTIONS, cfg.attention, "model.attention")
    mlp = _lookup(MLPS, cfg.mlp, "model.mlp")
    macs = L * E * H if E != H else 0  # forward multiply-adds
    for index in range(cfg.num_layers):
        macs += mixer.forward_macs(cfg, L) + (mlp.forward_macs(cfg, L) if has_mlp(cfg, index) else 0)
    N = num_predictions if cfg.sparse_prediction else L
    macs += N * H * H if cfg.head_transform else 0
    macs += N * (H * E + E * V) if cfg.tie_embeddings and E != H else N * H * V
    return 3.0 * 2.0 * macs
