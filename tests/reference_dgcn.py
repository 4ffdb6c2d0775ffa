"""An independent, functional re-reading of the authors' DINOGuidedGenerator (fusion_type="cnn") for tests.

Not a test module. `reference_state_dict` builds a state dict with THEIR key names and shapes (written out
here from reading code_network/dinov3/dinoparallelencoderplusdecoder.py, not derived from our module), and
`reference_forward` evaluates their forward pass from that dict with torch.nn.functional only (eval-mode BN).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _conv_bn(sd: dict, prefix: str, cin: int, cout: int, k: int, gen: torch.Generator) -> None:
    """Keys of nn.Sequential(Conv2d(bias=False), BatchNorm2d) at `prefix`.0 / `prefix`.1."""
    sd[f"{prefix}.0.weight"] = torch.randn(cout, cin, k, k, generator=gen) * (2.0 / (cin * k * k)) ** 0.5
    sd[f"{prefix}.1.weight"] = 1 + 0.1 * torch.randn(cout, generator=gen)
    sd[f"{prefix}.1.bias"] = 0.1 * torch.randn(cout, generator=gen)
    sd[f"{prefix}.1.running_mean"] = 0.1 * torch.randn(cout, generator=gen)
    sd[f"{prefix}.1.running_var"] = 0.5 + torch.rand(cout, generator=gen)
    sd[f"{prefix}.1.num_batches_tracked"] = torch.tensor(7)


def _residual(sd: dict, prefix: str, c: int, gen) -> None:
    # ResidualBlock.block = Sequential(conv, bn, GELU, conv, bn): indices 0, 1, 3, 4
    _conv_bn(sd, f"{prefix}.block", c, c, 3, gen)
    tmp = {}
    _conv_bn(tmp, "x", c, c, 3, gen)
    for key, value in tmp.items():
        sd[f"{prefix}.block.{int(key.split('.')[1]) + 3}.{key.split('.', 2)[2]}"] = value


def reference_state_dict(base: int, embed_dim: int, dino_levels=(True,) * 4, use_cnn: bool = True,
                         seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    c = [base, 2 * base, 4 * base, 8 * base]
    if use_cnn:
        _conv_bn(sd, "encoder.enc1.0.block", 1, c[0], 3, gen)
        _residual(sd, "encoder.enc1.1", c[0], gen)
        for i in (1, 2, 3):  # enc2..enc4: Sequential(MaxPool2d, ConvBNGELU, ResidualBlock)
            _conv_bn(sd, f"encoder.enc{i + 1}.1.block", c[i - 1], c[i], 3, gen)
            _residual(sd, f"encoder.enc{i + 1}.2", c[i], gen)
    for i, layer in enumerate((3, 6, 9, 12)):
        if dino_levels[i]:
            _conv_bn(sd, f"proj_f{layer}.block", embed_dim, c[i], 3, gen)
            # CrossFusion modules exist whenever the DINO level is on (also when use_cnn=False, unused then)
            _conv_bn(sd, f"fuse{i + 1}.proj_dino.block", c[i], c[i], 3, gen)
            _conv_bn(sd, f"fuse{i + 1}.proj_img.block", c[i], c[i], 3, gen)
            _conv_bn(sd, f"fuse{i + 1}.merge", 2 * c[i], c[i], 1, gen)   # merge.0 conv1x1, merge.1 BN
            _residual(sd, f"fuse{i + 1}.merge.3", c[i], gen)
    for up, (cin, cout) in zip((1, 2, 3), ((c[3], c[2]), (c[2], c[1]), (c[1], c[0]))):
        _conv_bn(sd, f"decoder.up{up}.1.block", cin, cout, 3, gen)       # up{k}.0 is the nn.Upsample
        _residual(sd, f"decoder.up{up}.2", cout, gen)
    _conv_bn(sd, "decoder.out.0.block", c[0], c[0] // 2, 3, gen)
    sd["decoder.out.1.weight"] = torch.randn(1, c[0] // 2, 3, 3, generator=gen) * 0.1
    sd["decoder.out.1.bias"] = torch.randn(1, generator=gen) * 0.1
    return sd


def _cbg(sd, prefix, x, gelu=True, conv=0, bn=1):
    """Conv (padding k//2) -> eval BatchNorm (eps 1e-5) -> exact GELU, from keys prefix.{conv,bn}.*"""
    w = sd[f"{prefix}.{conv}.weight"]
    x = F.conv2d(x, w, padding=w.shape[-1] // 2)
    x = F.batch_norm(x, sd[f"{prefix}.{bn}.running_mean"], sd[f"{prefix}.{bn}.running_var"],
                     sd[f"{prefix}.{bn}.weight"], sd[f"{prefix}.{bn}.bias"], training=False, eps=1e-5)
    return F.gelu(x) if gelu else x


def _res(sd, prefix, x):
    h = _cbg(sd, f"{prefix}.block", x)
    return x + _cbg(sd, f"{prefix}.block", h, gelu=False, conv=3, bn=4)


def reference_forward(sd: dict, img: torch.Tensor, dino_maps: list, dino_levels=(True,) * 4,
                      use_cnn: bool = True) -> torch.Tensor:
    """Their forward; `dino_maps` are the B x C x H/16 x W/16 grids of blocks 3, 6, 9, 12."""
    height, width = img.shape[-2:]
    f = [None] * 4
    for i, layer in enumerate((3, 6, 9, 12)):
        if dino_levels[i]:
            f[i] = F.interpolate(_cbg(sd, f"proj_f{layer}.block", dino_maps[i]), size=(height >> i, width >> i),
                                 mode="bilinear", align_corners=False)
    if use_cnn:
        e = [_res(sd, "encoder.enc1.1", _cbg(sd, "encoder.enc1.0.block", img))]
        for i in (1, 2, 3):
            h = F.max_pool2d(e[-1], 2)
            e.append(_res(sd, f"encoder.enc{i + 1}.2", _cbg(sd, f"encoder.enc{i + 1}.1.block", h)))
        for i in range(4):
            if dino_levels[i]:
                p = f"fuse{i + 1}"
                cat = torch.cat([_cbg(sd, f"{p}.proj_img.block", e[i]), _cbg(sd, f"{p}.proj_dino.block", f[i])], 1)
                e[i] = _res(sd, f"{p}.merge.3", _cbg(sd, f"{p}.merge", cat))
    else:
        e = f
    d = e[3]
    for up, skip in zip((1, 2, 3), (e[2], e[1], e[0])):
        u = F.interpolate(d, scale_factor=2, mode="bilinear", align_corners=False)
        d = _res(sd, f"decoder.up{up}.2", _cbg(sd, f"decoder.up{up}.1.block", u)) + skip
    h = _cbg(sd, "decoder.out.0.block", d)
    return torch.tanh(F.conv2d(h, sd["decoder.out.1.weight"], sd["decoder.out.1.bias"], padding=1))
