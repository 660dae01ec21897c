import keras
import numpy as np
from novolstm.keras import NovoLSTMCell  # also NovoLSTM (the layer), LSTM, GRU, ...

x = np.random.default_rng(0).normal(size=(256, 20, 8)).astype("float32")
y = x[:, :, :1].mean(axis=1)

# A cell for keras.layers.RNN, as keras.layers.LSTMCell; the model saves to .keras and loads
# in any process that has imported novolstm.keras.
model = keras.Sequential([keras.Input((20, 8)), keras.layers.RNN(NovoLSTMCell(16)), keras.layers.Dense(1)])
model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
history = model.fit(x, y, epochs=10, batch_size=32, verbose=0)
losses = history.history["loss"]
assert losses[-1] < 0.5 * losses[0]
