import torch
from novolstm.torch import NovoLSTM  # also LSTM, GRU, PeepholeLSTM and the *Cell classes

torch.manual_seed(0)
x = torch.randn(64, 20, 8)
y = x[:, :, :1].mean(dim=1)

layer = NovoLSTM(8, 16, batch_first=True)  # nn.LSTM's arguments and conventions
head = torch.nn.Linear(16, 1)
opt = torch.optim.Adam([*layer.parameters(), *head.parameters()], lr=1e-2)
losses = []
for step in range(200):
    out, (h, c) = layer(x)
    loss = ((head(out[:, -1]) - y) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
assert losses[-1] < 0.5 * losses[0]
