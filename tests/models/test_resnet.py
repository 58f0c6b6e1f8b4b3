import operator

import pytest
import torch
import torch.fx

from models.resnet import CifarResNet, CifarResNetConfig, cifar_resnet, parse_cifar_arch, torchvision_resnet

# He et al. 2015, Table 6 (3-channel CIFAR-10 input), in millions of parameters.
PAPER_PARAMETERS_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7}


def additions(model: torch.nn.Module) -> int:
    graph = torch.fx.symbolic_trace(model).graph
    return sum(1 for node in graph.nodes if node.op == "call_function" and node.target in (operator.add, torch.add))


@pytest.mark.parametrize("depth", sorted(PAPER_PARAMETERS_M))
def test_parameter_counts_match_the_paper(depth):
    model = cifar_resnet(depth, in_channels=3)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(count, 2 if depth < 110 else 1) == PAPER_PARAMETERS_M[depth]
    assert len(model.weight_layers()) == depth


@pytest.mark.parametrize("depth", [20, 56])
@pytest.mark.parametrize("in_channels, size", [(1, 28), (3, 32)])
def test_output_shapes(depth, in_channels, size):
    model = cifar_resnet(depth, in_channels=in_channels).eval()
    assert model(torch.zeros(3, in_channels, size, size)).shape == (3, 10)


@pytest.mark.parametrize("depth", [20, 56])
def test_plain_net_has_no_skip_additions_and_the_same_layers(depth):
    residual, plain = cifar_resnet(depth), cifar_resnet(depth, residual=False)
    assert additions(residual) == 3 * (depth - 2) // 6
    assert additions(plain) == 0
    assert [p.shape for p in residual.parameters()] == [p.shape for p in plain.parameters()]


def test_same_seed_gives_identical_plain_and_residual_weights():
    torch.manual_seed(0)
    residual = cifar_resnet(20)
    torch.manual_seed(0)
    plain = cifar_resnet(20, residual=False)
    assert all(
        torch.equal(a, b) for a, b in zip(residual.state_dict().values(), plain.state_dict().values(), strict=False)
    )


def test_parse_arch_names():
    assert parse_cifar_arch("resnet56") == CifarResNetConfig(depth=56, residual=True)
    assert parse_cifar_arch("plain20") == CifarResNetConfig(depth=20, residual=False)
    with pytest.raises(ValueError, match="unknown"):
        parse_cifar_arch("vgg16")
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(CifarResNetConfig(depth=21))


def test_torchvision_resnet_loads_a_local_state_dict(tmp_path):
    torch.manual_seed(1)
    reference = torchvision_resnet("resnet18")
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    loaded = torchvision_resnet("resnet18", tmp_path / "r18.pth")
    assert all(
        torch.equal(a, b) for a, b in zip(reference.state_dict().values(), loaded.state_dict().values(), strict=False)
    )
    with pytest.raises(FileNotFoundError):
        torchvision_resnet("resnet18", tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="unknown torchvision"):
        torchvision_resnet("resnet19")
