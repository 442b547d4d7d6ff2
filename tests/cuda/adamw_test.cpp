// AdamW on the GPU against the CPU: the fused adamw_update primitive over many tensors (more
// than one launch batch of 16, odd and empty shapes, strided views) for float and double, and
// AdamW<float, Cuda> against AdamW<float, Cpu> over a Lora's parameters for several steps.

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "cuda/gpu_adapter.hpp"
#include "cuda/reference.hpp"

namespace peft::gpu::test {
namespace {

class CudaAdamW : public CudaTest {};

struct HostTensor {
  HostMatrix value, grad, m, v;
};

template <class T>
void cpu_adamw(const AdamWStep& h, std::vector<HostTensor>& tensors) {
  std::vector<Matrix<T, Cpu>> store;
  std::vector<AdamWTensors<T, Cpu>> views;
  store.reserve(4 * tensors.size());
  for (auto& t : tensors) {
    store.push_back(to_typed<T>(t.value.view()));
    store.push_back(to_typed<T>(t.grad.view()));
    store.push_back(to_typed<T>(t.m.view()));
    store.push_back(to_typed<T>(t.v.view()));
    const std::size_t k = store.size() - 4;
    views.push_back(
        {store[k].view(), as_const(store[k + 1].view()), store[k + 2].view(), store[k + 3].view()});
  }
  HostCtx ctx;
  cpu::adamw_update(ctx, h, std::span<const AdamWTensors<T, Cpu>>(views));
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    tensors[i].value = to_double(as_const(store[4 * i].view()));
    tensors[i].m = to_double(as_const(store[4 * i + 2].view()));
    tensors[i].v = to_double(as_const(store[4 * i + 3].view()));
  }
}

TEST_F(CudaAdamW, FusedUpdateOverManyTensorsMatchesCpu) {
  const std::pair<index_t, index_t> shapes[] = {{1, 1},   {3, 17},  {129, 3},   {17, 129}, {0, 5},
                                                {1, 129}, {64, 64}, {129, 129}, {2, 1}};
  for (DType t : {DType::f32, DType::f64}) {
    SCOPED_TRACE(name(t));
    // 37 tensors: three launches of up to 16, one of them with an empty tensor.
    std::vector<HostTensor> host;
    std::vector<std::unique_ptr<DeviceMatrix>> device;
    std::uint32_t seed = 1;
    for (int k = 0; k < 37; ++k) {
      const auto [rows, cols] = shapes[k % 9];
      HostTensor h{random_matrix(t, rows, cols, ++seed), HostMatrix(rows, cols),
                   HostMatrix(rows, cols), HostMatrix(rows, cols)};
      const bool strided = k % 3 == 1;
      device.push_back(std::make_unique<DeviceMatrix>(t, h.value.view(), strided));
      device.push_back(std::make_unique<DeviceMatrix>(t, h.grad.view(), !strided));
      device.push_back(std::make_unique<DeviceMatrix>(t, h.m.view(), strided));
      device.push_back(std::make_unique<DeviceMatrix>(t, h.v.view(), strided));
      host.push_back(std::move(h));
    }
    std::vector<AdamWDeviceTensors> tensors;
    for (std::size_t k = 0; k < host.size(); ++k)
      tensors.push_back({device[4 * k].get(), device[4 * k + 1].get(), device[4 * k + 2].get(),
                         device[4 * k + 3].get()});

    const double beta1 = 0.9, beta2 = 0.999;
    for (int step = 1; step <= 3; ++step) {
      for (std::size_t k = 0; k < host.size(); ++k) {
        host[k].grad = random_matrix(t, host[k].value.rows(), host[k].value.cols(),
                                     1000 + 50 * step + static_cast<std::uint32_t>(k), 0.5);
        device[4 * k + 1]->upload(host[k].grad.view());
      }
      const AdamWStep h{.lr = 1e-2,
                        .beta1 = beta1,
                        .beta2 = beta2,
                        .eps = 1e-8,
                        .weight_decay = 0.1,
                        .bias_correction1 = 1 - std::pow(beta1, step),
                        .bias_correction2 = 1 - std::pow(beta2, step)};
      adamw_update(h, tensors);
      if (t == DType::f32)
        cpu_adamw<float>(h, host);
      else
        cpu_adamw<double>(h, host);

      // The device may fuse multiply-adds: a few roundings of the parameter and of the step.
      const double u = unit_roundoff(t);
      for (std::size_t k = 0; k < host.size(); ++k) {
        SCOPED_TRACE(peft::detail::concat("step ", step, ", tensor ", k, " (",
                                          shape_string(host[k].value.view()), ")"));
        const HostMatrix value = device[4 * k]->download();
        const HostMatrix m = device[4 * k + 2]->download();
        const HostMatrix v = device[4 * k + 3]->download();
        int bad = 0;
        for (index_t i = 0; i < value.size(); ++i) {
          const double p = host[k].value.data()[i];
          if (!(std::abs(value.data()[i] - p) <= 16 * u * (std::abs(p) + h.lr)) && bad++ < 3)
            ADD_FAILURE() << "value[" << i << "] = " << value.data()[i] << ", cpu " << p;
          const double mm = host[k].m.data()[i], vv = host[k].v.data()[i];
          // m = b1 m + (1 - b1) g may cancel: bound by its terms (|m|, |g| <= 0.5), not by m.
          if (!(std::abs(m.data()[i] - mm) <= 16 * u * (std::abs(mm) + 0.5)) && bad++ < 3)
            ADD_FAILURE() << "m[" << i << "] = " << m.data()[i] << ", cpu " << mm;
          if (!(std::abs(v.data()[i] - vv) <= 16 * u * std::abs(vv)) && bad++ < 3)
            ADD_FAILURE() << "v[" << i << "] = " << v.data()[i] << ", cpu " << vv;
        }
        EXPECT_EQ(bad, 0);
        for (int j = 0; j < 4; ++j) EXPECT_TRUE(device[4 * k + j]->gaps_untouched());
      }
    }
  }
}

TEST_F(CudaAdamW, OptimizerOverLoraMatchesCpu) {
  const index_t n = 17, in = 129, out = 33;
  const LoraConfig cfg{.r = 8, .alpha = 16, .dropout = 0.1, .init = LoraInit::none, .seed = 4};
  const LayerOptions opts{.stream_id = 9};
  const AdamWOptions adam{.lr = 1e-2, .weight_decay = 0.1};
  const HostMatrix w0 = random_matrix(DType::f32, out, in, 1, 0.1);
  const HostMatrix bias = random_matrix(DType::f32, 1, out, 2, 0.1);

  HostCtx ctx;
  const auto w0_f = to_typed<float>(w0.view());
  const auto bias_f = to_typed<float>(bias.view());
  Lora<float, Cpu> cpu_layer(ctx, as_const(w0_f.view()), cfg, opts,
                             VectorView<const float, Cpu>(bias_f.data(), out));
  AdamW<float, Cpu> cpu_opt(adam);
  cpu_opt.add(cpu_layer);

  auto gpu_layer = make_adapter(DType::f32, {w0.view(), opts, bias.view()}, cfg);
  gpu_layer->add_to_optimizer(adam);
  const HostMatrix a0 = gpu_layer->parameter(0);

  for (int step = 0; step < 4; ++step) {
    SCOPED_TRACE(peft::detail::concat("step ", step));
    const HostMatrix x = random_matrix(DType::f32, n, in, 10 + 2 * step);
    const HostMatrix dy = random_matrix(DType::f32, n, out, 11 + 2 * step);
    const auto x_f = to_typed<float>(x.view());
    const auto dy_f = to_typed<float>(dy.view());
    Matrix<float, Cpu> y(n, out), dx(n, in);
    cpu_layer.zero_grad(ctx);
    cpu_layer.forward(ctx, as_const(x_f.view()), y.view());
    cpu_layer.backward(ctx, as_const(x_f.view()), as_const(dy_f.view()), dx.view());
    cpu_opt.step(ctx);

    DeviceMatrix x_d(DType::f32, x.view()), dy_d(DType::f32, dy.view());
    DeviceMatrix y_d(DType::f32, n, out), dx_d(DType::f32, n, in);
    gpu_layer->zero_grad();
    gpu_layer->forward(x_d, y_d);
    gpu_layer->backward(x_d, dy_d, dx_d);
    gpu_layer->optimizer_step();

    auto params = cpu_layer.parameters();
    for (std::size_t p = 0; p < params.size(); ++p) {
      const HostMatrix cpu_value = to_double(as_const(params[p].value));
      EXPECT_LT(relative_error(gpu_layer->parameter(p).view(), cpu_value.view()), 1e-5)
          << params[p].name;
    }
  }
  // The optimizer moved the parameters.
  EXPECT_GT(relative_error(gpu_layer->parameter(0).view(), a0.view()), 1e-3);
}

}  // namespace
}  // namespace peft::gpu::test
