#pragma once
// A decoder-only, character-level transformer (GPT-2's shape, pre-norm, untied output):
//
//   x = embed_tokens[ids] + embed_positions[t]
//   each layer:  x += o_proj(attention(q_proj(a), k_proj(a), v_proj(a))),  a = ln_1(x)
//                x += down_proj(gelu(up_proj(ln_2(x))))
//   logits = lm_head(ln_f(x))
//
// Tensor names follow Hugging Face's (layers.0.attn.q_proj.weight, ...), so the same base loads
// into PyTorch and a PEFT adapter's target modules are layers.N.attn.q_proj etc. Forward keeps
// what backward needs in Activations; backward accumulates the gradients of the parameters that
// train (all of them while pre-training; only the attached adapters' afterwards).

#include <cmath>
#include <string>
#include <vector>

#include "attention.hpp"
#include "common.hpp"
#include "cross_entropy.hpp"
#include "embedding.hpp"
#include "gelu.hpp"
#include "layer_norm.hpp"
#include "projection.hpp"

namespace tfm {

struct ModelConfig {
  index_t vocab = 128;  // bytes 0..127 (text.hpp maps everything else to '?')
  index_t dim = 128;    // d_model
  index_t layers = 4;
  index_t heads = 4;
  index_t context = 128;  // positions
  index_t hidden = 512;   // MLP width, 4 d
};

// A batch of sequences: token ids and next-token targets of row b·seq + t.
struct Batch {
  index_t batch = 0;
  index_t seq = 0;
  std::vector<int> inputs;
  std::vector<int> targets;
};

template <class T>
struct Block {
  Block(const ModelConfig& c, std::uint64_t seed, std::uint32_t id)
      : ln_1(c.dim),
        q_proj(c.dim, c.dim, 0.02, seed, id + 0),
        k_proj(c.dim, c.dim, 0.02, seed, id + 1),
        v_proj(c.dim, c.dim, 0.02, seed, id + 2),
        // GPT-2 scales the projections into the residual stream by 1 / sqrt(2 layers).
        o_proj(c.dim, c.dim, 0.02 / std::sqrt(2.0 * double(c.layers)), seed, id + 3),
        ln_2(c.dim),
        up_proj(c.dim, c.hidden, 0.02, seed, id + 4),
        down_proj(c.hidden, c.dim, 0.02 / std::sqrt(2.0 * double(c.layers)), seed, id + 5) {}

  LayerNorm<T> ln_1;
  Projection<T> q_proj, k_proj, v_proj, o_proj;
  LayerNorm<T> ln_2;
  Projection<T> up_proj, down_proj;
};

// Everything one forward keeps for its backward, and backward's scratch, for up to `rows`
// = batch · context rows; a smaller batch uses the leading rows.
template <class T>
struct Activations {
  struct Layer {
    Mat<T> a, q, k, v, probs, att, mid, m, u, g;
    std::vector<double> mean_1, rstd_1, mean_2, rstd_2;
  };

  Activations(const ModelConfig& c, index_t max_batch) {
    const index_t n = max_batch * c.context, d = c.dim;
    for (index_t l = 0; l <= c.layers; ++l) residual.emplace_back(n, d);
    for (index_t l = 0; l < c.layers; ++l)
      layers.push_back({Mat<T>(n, d),
                        Mat<T>(n, d),
                        Mat<T>(n, d),
                        Mat<T>(n, d),
                        Mat<T>(max_batch * c.heads * c.context, c.context),
                        Mat<T>(n, d),
                        Mat<T>(n, d),
                        Mat<T>(n, d),
                        Mat<T>(n, c.hidden),
                        Mat<T>(n, c.hidden),
                        {},
                        {},
                        {},
                        {}});
    final_norm = Mat<T>(n, d);
    logits = Mat<T>(n, c.vocab);
    dlogits = Mat<T>(n, c.vocab);
    for (Mat<T>* m : {&d_res, &d_mid, &d_m, &d_att, &d_q, &d_k, &d_v, &d_a, &d_tmp})
      *m = Mat<T>(n, d);
    d_hidden = Mat<T>(n, c.hidden);
    d_scores = Mat<T>(max_batch * c.heads * c.context, c.context);
  }

  std::vector<Mat<T>> residual;  // x entering layer l; [layers] is the last layer's output
  std::vector<Layer> layers;
  Mat<T> final_norm, logits, dlogits;
  std::vector<double> mean_f, rstd_f;
  Mat<T> d_res, d_mid, d_m, d_att, d_q, d_k, d_v, d_a, d_tmp, d_hidden, d_scores;
  std::vector<int> positions;
  index_t rows = 0;
  AttentionShape shape;
};

template <class T>
class Transformer {
 public:
  Transformer(const ModelConfig& c, std::uint64_t seed)
      : config_(c),
        embed_tokens_(c.vocab, c.dim, seed, 0),
        embed_positions_(c.context, c.dim, seed, 1),
        ln_f_(c.dim),
        lm_head_(c.dim, c.vocab, 0.02, seed, 2) {
    PEFT_CHECK_ARG(c.dim % c.heads == 0, "Transformer: dim ", c.dim, " is not a multiple of ",
                   c.heads, " heads");
    blocks_.reserve(std::size_t(c.layers));
    for (index_t l = 0; l < c.layers; ++l) blocks_.emplace_back(c, seed, 16 + 8 * std::uint32_t(l));
  }

  const ModelConfig& config() const { return config_; }
  std::vector<Block<T>>& blocks() { return blocks_; }

  // Mean next-character loss of the batch; with `gradient`, also dlogits for backward.
  double forward(Ctx& ctx, const Batch& batch, Activations<T>& act, bool gradient) {
    const index_t n = batch.batch * batch.seq;
    PEFT_CHECK_ARG(batch.seq <= config_.context && n <= act.residual[0].rows(),
                   "Transformer::forward: batch too large");
    act.rows = n;
    act.shape = {batch.batch, batch.seq, config_.heads};
    act.positions.resize(std::size_t(n));
    for (index_t i = 0; i < n; ++i) act.positions[std::size_t(i)] = int(i % batch.seq);
    embed_tokens_.forward(batch.inputs, rows(act.residual[0], n), false);
    embed_positions_.forward(act.positions, rows(act.residual[0], n), true);
    for (std::size_t l = 0; l < blocks_.size(); ++l)
      block_forward(ctx, blocks_[l], act.layers[l], act, rows(act.residual[l], n),
                    rows(act.residual[l + 1], n));
    ln_f_.forward(ctx, rows(act.residual.back(), n), rows(act.final_norm, n), act.mean_f,
                  act.rstd_f);
    lm_head_.forward(ctx, rows(act.final_norm, n), rows(act.logits, n));
    return cross_entropy<T>(ctx, rows(act.logits, n), batch.targets,
                            gradient ? rows(act.dlogits, n) : View<T>{});
  }

  // Back from dlogits (written by forward with gradient = true).
  void backward(Ctx& ctx, const Batch& batch, Activations<T>& act) {
    const index_t n = act.rows;
    View<T> d_res = rows(act.d_res, n), d_tmp = rows(act.d_tmp, n);
    lm_head_.backward(ctx, rows(act.final_norm, n), rows(act.dlogits, n), d_tmp);
    ln_f_.backward(ctx, rows(act.residual.back(), n), d_tmp, act.mean_f, act.rstd_f, d_res);
    for (std::size_t l = blocks_.size(); l-- > 0;)
      block_backward(ctx, blocks_[l], act.layers[l], act, rows(act.residual[l], n));
    if (!train_base_) return;
    embed_tokens_.backward(batch.inputs, d_res);
    embed_positions_.backward(act.positions, d_res);
  }

  // Pre-training trains every parameter; afterwards the base is frozen (no gradients of its
  // own are computed; dx still flows to the adapters below).
  void set_train_base(bool train) {
    train_base_ = train;
    lm_head_.set_trainable(train);
    for (auto& b : blocks_)
      for (Projection<T>* p : projections(b)) p->set_trainable(train);
  }

  void zero_grad(Ctx& ctx) {
    for (auto& p : parameters()) peft::cpu::fill(ctx, p.grad, 0.0);
  }

  // Every base tensor under its Hugging Face name.
  std::vector<Param<T>> parameters() {
    std::vector<Param<T>> all = {embed_tokens_.parameter("embed_tokens.weight"),
                                 embed_positions_.parameter("embed_positions.weight")};
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      const std::string prefix = "layers." + std::to_string(l);
      Block<T>& b = blocks_[l];
      for (auto& p : b.ln_1.parameters(prefix + ".ln_1")) all.push_back(p);
      for (auto& [name, proj] : named_projections(l))
        all.push_back(proj->parameter(name + ".weight"));
      for (auto& p : b.ln_2.parameters(prefix + ".ln_2")) all.push_back(p);
    }
    for (auto& p : ln_f_.parameters("ln_f")) all.push_back(p);
    all.push_back(lm_head_.parameter("lm_head.weight"));
    return all;
  }

  // The adaptable projections of layer l by module name ("layers.0.attn.q_proj", ...).
  std::vector<std::pair<std::string, Projection<T>*>> named_projections(std::size_t l) {
    const std::string p = "layers." + std::to_string(l);
    Block<T>& b = blocks_[l];
    return {{p + ".attn.q_proj", &b.q_proj},  {p + ".attn.k_proj", &b.k_proj},
            {p + ".attn.v_proj", &b.v_proj},  {p + ".attn.o_proj", &b.o_proj},
            {p + ".mlp.up_proj", &b.up_proj}, {p + ".mlp.down_proj", &b.down_proj}};
  }
  std::vector<std::pair<std::string, Projection<T>*>> named_projections() {
    std::vector<std::pair<std::string, Projection<T>*>> all;
    for (std::size_t l = 0; l < blocks_.size(); ++l)
      for (auto& e : named_projections(l)) all.push_back(e);
    return all;
  }

 private:
  static View<T> rows(Mat<T>& m, index_t n) { return m.view().rows_range(0, n); }
  static std::vector<Projection<T>*> projections(Block<T>& b) {
    return {&b.q_proj, &b.k_proj, &b.v_proj, &b.o_proj, &b.up_proj, &b.down_proj};
  }

  // y = x + attention part; then y += MLP part.
  void block_forward(Ctx& ctx, Block<T>& b, typename Activations<T>::Layer& s, Activations<T>& act,
                     View<T> x, View<T> y) {
    const index_t n = act.rows;
    const View<T> a = rows(s.a, n), att = rows(s.att, n), mid = rows(s.mid, n), m = rows(s.m, n);
    const View<T> tmp = rows(act.d_tmp, n);  // free during forward
    b.ln_1.forward(ctx, x, a, s.mean_1, s.rstd_1);
    b.q_proj.forward(ctx, a, rows(s.q, n));
    b.k_proj.forward(ctx, a, rows(s.k, n));
    b.v_proj.forward(ctx, a, rows(s.v, n));
    attention_forward<T>(ctx, act.shape, rows(s.q, n), rows(s.k, n), rows(s.v, n), s.probs.view(),
                         att);
    b.o_proj.forward(ctx, att, tmp);
    add(ctx, x, tmp, mid);
    b.ln_2.forward(ctx, mid, m, s.mean_2, s.rstd_2);
    b.up_proj.forward(ctx, m, rows(s.u, n));
    gelu_forward<T>(ctx, rows(s.u, n), rows(s.g, n));
    b.down_proj.forward(ctx, rows(s.g, n), tmp);
    add(ctx, mid, tmp, y);
  }

  // act.d_res holds dL/dy on entry and dL/dx on return.
  void block_backward(Ctx& ctx, Block<T>& b, typename Activations<T>::Layer& s, Activations<T>& act,
                      View<T> x) {
    const index_t n = act.rows;
    const View<T> d_res = rows(act.d_res, n), d_mid = rows(act.d_mid, n), d_m = rows(act.d_m, n);
    const View<T> d_hidden = rows(act.d_hidden, n), d_tmp = rows(act.d_tmp, n);
    const View<T> d_att = rows(act.d_att, n), d_a = rows(act.d_a, n);
    // MLP: mid -> ln_2 -> up -> gelu -> down, added to mid.
    b.down_proj.backward(ctx, rows(s.g, n), d_res, d_hidden);
    gelu_backward<T>(ctx, rows(s.u, n), d_hidden, d_hidden);
    b.up_proj.backward(ctx, rows(s.m, n), d_hidden, d_m);
    b.ln_2.backward(ctx, rows(s.mid, n), d_m, s.mean_2, s.rstd_2, d_tmp);
    add(ctx, d_res, d_tmp, d_mid);
    // Attention: x -> ln_1 -> q, k, v -> attention -> o, added to x.
    b.o_proj.backward(ctx, rows(s.att, n), d_mid, d_att);
    attention_backward<T>(ctx, act.shape, rows(s.q, n), rows(s.k, n), rows(s.v, n), s.probs.view(),
                          d_att, rows(act.d_q, n), rows(act.d_k, n), rows(act.d_v, n),
                          act.d_scores.view());
    const View<T> a = rows(s.a, n);
    b.q_proj.backward(ctx, a, rows(act.d_q, n), d_a);
    b.k_proj.backward(ctx, a, rows(act.d_k, n), d_tmp);
    add(ctx, d_a, d_tmp, d_a);
    b.v_proj.backward(ctx, a, rows(act.d_v, n), d_tmp);
    add(ctx, d_a, d_tmp, d_a);
    b.ln_1.backward(ctx, x, d_a, s.mean_1, s.rstd_1, d_tmp);
    add(ctx, d_mid, d_tmp, d_res);
  }

  // out = p + q (out may alias either).
  static void add(Ctx& ctx, CView<T> p, CView<T> q, View<T> out) {
#pragma omp parallel for num_threads(ctx.threads()) if (out.size() > 8192)
    for (index_t i = 0; i < out.rows(); ++i)
      for (index_t j = 0; j < out.cols(); ++j) out(i, j) = p(i, j) + q(i, j);
  }

  ModelConfig config_;
  Embedding<T> embed_tokens_, embed_positions_;
  std::vector<Block<T>> blocks_;
  LayerNorm<T> ln_f_;
  Projection<T> lm_head_;
  bool train_base_ = true;
};

}  // namespace tfm
