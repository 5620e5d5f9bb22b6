{#
    Customer segments (RFM): one row per customer who bought.

    recency_days counts from the customer's last order to the day of the latest order in the
    fact (not to today), so the mart changes when orders arrive, not when time passes.

    Each score is 1 to 5 (5 best), from the customer's place among all customers:
    score = ceil(5 * k / n), where n is the number of customers and k the number whose measure is
    as good as theirs or worse (ties included). Equal measures get equal scores, and a better
    measure never gets a lower score. Integer arithmetic, so no rounding can move a boundary.

    rfm_segment, the first rule that matches:
      New          first order in the 90 days up to the latest order day
      Champions    recency, frequency and monetary scores all 4 or 5
      Loyal        recency 3 or more and frequency 3 or more
      Promising    recency 3 or more, frequency 1 or 2
      At risk      recency 1 or 2, frequency 3 or more: used to buy often, not lately
      Hibernating  recency 1 or 2, frequency 1 or 2
#}

with

transactions as (
    select * from {{ ref('fct_transactions') }}
),

customers as (
    select * from {{ ref('dim_customers') }}
),

-- the day the recency is measured to
reference_day as (
    select cast(max(order_date) as date) as latest_order_day
    from transactions
),

per_customer as (
    select
        customer_key,
        cast(min(order_date) as date) as first_order_date,
        cast(max(order_date) as date) as last_order_date,
        count(distinct order_id) as total_orders,
        sum(quantity) as total_quantity,
        sum(amount) as revenue
    from transactions
    group by customer_key
),

measured as (
    select
        per_customer.*,
        reference_day.latest_order_day - per_customer.last_order_date as recency_days,
        per_customer.first_order_date > reference_day.latest_order_day - 90 as is_new
    from per_customer
    cross join reference_day
),

-- k of each score: customers as good or worse (the default window frame includes ties)
ranked as (
    select
        *,
        count(*) over () as customer_count,
        count(*) over (order by recency_days desc) as recency_rank,
        count(*) over (order by total_orders) as frequency_rank,
        count(*) over (order by revenue) as monetary_rank
    from measured
),

scored as (
    select
        *,
        (5 * recency_rank + customer_count - 1) / customer_count as recency_score,
        (5 * frequency_rank + customer_count - 1) / customer_count as frequency_score,
        (5 * monetary_rank + customer_count - 1) / customer_count as monetary_score
    from ranked
),

segmented as (
    select
        *,
        case
            when is_new then 'New'
            when recency_score >= 4 and frequency_score >= 4 and monetary_score >= 4 then 'Champions'
            when recency_score >= 3 and frequency_score >= 3 then 'Loyal'
            when recency_score >= 3 then 'Promising'
            when frequency_score >= 3 then 'At risk'
            else 'Hibernating'
        end as rfm_segment
    from scored
),

final as (
    select
        cast(customers.customer_id as bigint) as customer_id,
        cast(customers.full_name as text) as full_name,
        cast(customers.gender as text) as gender,
        cast(segmented.first_order_date as date) as first_order_date,
        cast(segmented.last_order_date as date) as last_order_date,
        cast(segmented.total_orders as bigint) as total_orders,
        cast(segmented.total_quantity as bigint) as total_quantity,
        cast(segmented.revenue as bigint) as revenue,
        cast(round(segmented.revenue / nullif(segmented.total_orders, 0), 2) as numeric(18, 2)) as avg_order_value,
        cast(segmented.recency_days as integer) as recency_days,
        cast(segmented.recency_score as integer) as recency_score,
        cast(segmented.frequency_score as integer) as frequency_score,
        cast(segmented.monetary_score as integer) as monetary_score,
        cast(segmented.rfm_segment as text) as rfm_segment
    from segmented
    inner join customers
        on segmented.customer_key = customers.customer_key
)

select * from final
